//! Architecture detection from ELF headers.

use crate::platform::Platform;

/// The identifying part of an ELF header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ElfHeader {
    pub class64: bool,
    pub little_endian: bool,
    pub machine: u16,
    pub flags: u32,
}

/// How many bytes of a file `ElfHeader::parse` needs.
pub const ELF_HEADER_LEN: usize = 52;

const EM_386: u16 = 3;
const EM_MIPS: u16 = 8;
const EM_PPC: u16 = 20;
const EM_PPC64: u16 = 21;
const EM_S390: u16 = 22;
const EM_ARM: u16 = 40;
const EM_X86_64: u16 = 62;
const EM_AARCH64: u16 = 183;
const EM_RISCV: u16 = 243;
const EM_LOONGARCH: u16 = 258;

const EF_ARM_ABI_FLOAT_SOFT: u32 = 0x200;
const EF_ARM_ABI_FLOAT_HARD: u32 = 0x400;

impl ElfHeader {
    /// Parses the start of a file; `None` when it is not ELF.
    pub fn parse(head: &[u8]) -> Option<ElfHeader> {
        if head.len() < ELF_HEADER_LEN || !head.starts_with(b"\x7fELF") {
            return None;
        }
        let class64 = match head.get(4)? {
            1 => false,
            2 => true,
            _ => return None,
        };
        let little_endian = match head.get(5)? {
            1 => true,
            2 => false,
            _ => return None,
        };
        let u16_at = |at: usize| -> Option<u16> {
            let bytes: [u8; 2] = head.get(at..at + 2)?.try_into().ok()?;
            Some(if little_endian {
                u16::from_le_bytes(bytes)
            } else {
                u16::from_be_bytes(bytes)
            })
        };
        let u32_at = |at: usize| -> Option<u32> {
            let bytes: [u8; 4] = head.get(at..at + 4)?.try_into().ok()?;
            Some(if little_endian {
                u32::from_le_bytes(bytes)
            } else {
                u32::from_be_bytes(bytes)
            })
        };
        // e_flags follows e_entry, e_phoff and e_shoff, which are 4 or 8 bytes each.
        let flags_at = if class64 { 48 } else { 36 };
        Some(ElfHeader {
            class64,
            little_endian,
            machine: u16_at(18)?,
            flags: u32_at(flags_at)?,
        })
    }

    /// The OCI platform this header is built for, if kiln knows it.
    pub fn platform(&self) -> Option<Platform> {
        let arch = match (self.machine, self.class64, self.little_endian) {
            (EM_X86_64, true, true) => "amd64",
            (EM_386, false, true) => "386",
            (EM_AARCH64, true, true) => "arm64",
            (EM_ARM, false, true) => "arm",
            (EM_MIPS, true, true) => "mips64le",
            (EM_MIPS, true, false) => "mips64",
            (EM_MIPS, false, true) => "mipsle",
            (EM_MIPS, false, false) => "mips",
            (EM_PPC64, true, true) => "ppc64le",
            (EM_PPC64, true, false) => "ppc64",
            (EM_S390, true, false) => "s390x",
            (EM_RISCV, true, true) => "riscv64",
            (EM_LOONGARCH, true, true) => "loong64",
            _ => return None,
        };
        let mut platform = Platform::linux(arch);
        if arch == "arm" {
            platform.variant = if self.flags & EF_ARM_ABI_FLOAT_HARD != 0 {
                Some("v7".to_owned())
            } else if self.flags & EF_ARM_ABI_FLOAT_SOFT != 0 {
                Some("v5".to_owned())
            } else {
                None
            };
        }
        Some(platform)
    }

    /// A description like `file(1)` gives: "ELF 64-bit LSB, machine 8 (MIPS), flags 0x80000007".
    pub fn describe(&self) -> String {
        let machine = match self.machine {
            EM_386 => "Intel 80386",
            EM_MIPS => "MIPS",
            EM_PPC => "PowerPC",
            EM_PPC64 => "PowerPC64",
            EM_S390 => "IBM S/390",
            EM_ARM => "ARM",
            EM_X86_64 => "x86-64",
            EM_AARCH64 => "AArch64",
            EM_RISCV => "RISC-V",
            EM_LOONGARCH => "LoongArch",
            _ => "unknown machine",
        };
        format!(
            "ELF {}-bit {}, machine {} ({machine}), flags {:#x}",
            if self.class64 { 64 } else { 32 },
            if self.little_endian { "LSB" } else { "MSB" },
            self.machine,
            self.flags
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(class: u8, data: u8, machine: u16, flags: u32) -> Vec<u8> {
        let mut head = vec![0u8; 64];
        head[..4].copy_from_slice(b"\x7fELF");
        head[4] = class;
        head[5] = data;
        let le = data == 1;
        let m = if le {
            machine.to_le_bytes()
        } else {
            machine.to_be_bytes()
        };
        head[18..20].copy_from_slice(&m);
        let f = if le {
            flags.to_le_bytes()
        } else {
            flags.to_be_bytes()
        };
        let at = if class == 2 { 48 } else { 36 };
        head[at..at + 4].copy_from_slice(&f);
        head
    }

    fn platform(head: Vec<u8>) -> String {
        ElfHeader::parse(&head)
            .unwrap()
            .platform()
            .unwrap()
            .to_string()
    }

    #[test]
    fn machines_map_to_oci_names() {
        assert_eq!(platform(header(2, 1, EM_X86_64, 0)), "linux/amd64");
        assert_eq!(
            platform(header(2, 1, EM_MIPS, 0x8000_0007)),
            "linux/mips64le"
        );
        assert_eq!(platform(header(2, 2, EM_MIPS, 0)), "linux/mips64");
        assert_eq!(platform(header(1, 1, EM_ARM, 0x0500_0400)), "linux/arm/v7");
        assert_eq!(platform(header(1, 1, EM_ARM, 0x0500_0200)), "linux/arm/v5");
        assert_eq!(platform(header(2, 2, EM_S390, 0)), "linux/s390x");
        assert_eq!(platform(header(2, 1, EM_PPC64, 0)), "linux/ppc64le");
        assert_eq!(platform(header(1, 1, EM_386, 0)), "linux/386");
        assert_eq!(platform(header(2, 1, EM_RISCV, 5)), "linux/riscv64");
        assert_eq!(platform(header(2, 1, EM_LOONGARCH, 0)), "linux/loong64");
    }

    #[test]
    fn non_elf_and_truncated_input_is_none() {
        assert!(ElfHeader::parse(b"#!/bin/sh\n").is_none());
        assert!(ElfHeader::parse(&header(2, 1, EM_X86_64, 0)[..20]).is_none());
        assert!(ElfHeader::parse(&header(3, 1, EM_X86_64, 0)).is_none());
        assert!(ElfHeader::parse(&header(2, 1, 9999, 0))
            .unwrap()
            .platform()
            .is_none());
    }
}
