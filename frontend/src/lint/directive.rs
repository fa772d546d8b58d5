//! The `# check=skip=Rule1,Rule2;error=true` directive, read as BuildKit
//! reads it: `;`-separated `key=value` settings, `skip=all` skipping every
//! rule, names compared ignoring case.

use std::collections::BTreeSet;

use super::Rule;

/// What `# check=` asks for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CheckDirective {
    /// `skip=all`.
    pub skip_all: bool,
    /// The rules `skip=` names.
    pub skip: BTreeSet<Rule>,
    /// `error=true`: findings fail the build.
    pub error: bool,
    /// What was wrong with the directive, lowercase: it is otherwise obeyed
    /// as far as it can be.
    pub notes: Vec<String>,
}

impl CheckDirective {
    /// Reads the directive's value (what follows `# check=`).
    pub fn parse(value: &str) -> CheckDirective {
        let mut directive = CheckDirective::default();
        for setting in value.split(';').map(str::trim).filter(|s| !s.is_empty()) {
            let Some((key, value)) = setting.split_once('=') else {
                directive.notes.push(format!(
                    "# check=: {setting:?} is not key=value; write skip=RULE,... or error=true"
                ));
                continue;
            };
            match key.trim().to_ascii_lowercase().as_str() {
                "skip" => directive.read_skip(value),
                "error" => match value.trim().to_ascii_lowercase().as_str() {
                    "true" | "1" => directive.error = true,
                    "false" | "0" => directive.error = false,
                    other => directive.notes.push(format!(
                        "# check=: error={other:?} is neither true nor false; the checks stay warnings"
                    )),
                },
                other => directive.notes.push(format!(
                    "# check=: unknown setting {other:?}; the settings are skip and error"
                )),
            }
        }
        directive
    }

    fn read_skip(&mut self, list: &str) {
        for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            if name.eq_ignore_ascii_case("all") {
                self.skip_all = true;
                continue;
            }
            match Rule::from_name(name) {
                Some(rule) => {
                    self.skip.insert(rule);
                }
                None => self.notes.push(format!(
                    "# check=: unknown rule {name:?} in skip=; the rules are: {}",
                    Rule::ALL.map(Rule::name).join(", ")
                )),
            }
        }
    }

    /// Whether findings of `rule` are left out.
    pub fn skips(&self, rule: Rule) -> bool {
        self.skip_all || self.skip.contains(&rule)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skip_list_and_error() {
        let d = CheckDirective::parse("skip=FromAsCasing, stagenamecasing;error=true");
        assert!(d.skips(Rule::FromAsCasing) && d.skips(Rule::StageNameCasing));
        assert!(!d.skips(Rule::UndefinedVar));
        assert!(d.error && d.notes.is_empty());
    }

    #[test]
    fn skip_all_skips_everything() {
        let d = CheckDirective::parse("skip=all");
        assert!(Rule::ALL.iter().all(|r| d.skips(*r)));
        assert!(!d.error);
    }

    #[test]
    fn unknown_names_are_noted_not_silent() {
        let d = CheckDirective::parse("skip=NoSuchRule,FromAsCasing;error=maybe;colour=red");
        assert!(d.skips(Rule::FromAsCasing));
        assert_eq!(d.notes.len(), 3, "{:?}", d.notes);
        assert!(d.notes[0].contains("\"NoSuchRule\""), "{:?}", d.notes);
    }
}
