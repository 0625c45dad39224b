//! File capabilities for the binary, as ko sets them from `.ko.yaml`'s `linux_capabilities`:
//! the `security.capability` extended attribute, carried in the layer's tar as the PAX record
//! `SCHILY.xattr.security.capability`.
//!
//! A term is a capability name (`net_bind_service`, `CAP_NET_BIND_SERVICE`, any case, or its
//! number), which is permitted, or a `setcap` / cap_from_text(3) clause such as
//! `bpf,perfmon=ep` or `=p` (all known capabilities).

/// The capabilities Linux knows by name, by number.
const NAMES: [&str; 41] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
];

/// One capability's bit: by name (with or without `CAP_`, any case), `all`, or a number below
/// 64 for one newer than this table.
fn mask_of(text: &str) -> Result<u64, String> {
    if let Ok(index) = text.parse::<u8>() {
        if index < 64 {
            return Ok(1 << index);
        }
    }
    let upper = text.to_ascii_uppercase();
    if upper == "ALL" {
        return Ok((1u64 << NAMES.len()) - 1);
    }
    let name = upper.strip_prefix("CAP_").unwrap_or(&upper);
    NAMES
        .iter()
        .position(|known| *known == name)
        .map(|index| 1 << index)
        .ok_or_else(|| format!("unknown capability {text:?}"))
}

/// The `security.capability` value for `terms` (version 2 of the kernel's `vfs_cap_data`: the
/// magic with the effective flag, then the permitted and inheritable sets' low and high words,
/// little-endian). None when the terms grant nothing: the binary gets no attribute.
pub fn file_capabilities(terms: &[String]) -> Result<Option<Vec<u8>>, String> {
    let (mut permitted, mut inheritable, mut effective) = (0u64, 0u64, 0u64);
    for term in terms {
        let Some(at) = term.find(['+', '-', '=']) else {
            permitted |= mask_of(term)?;
            continue;
        };
        let (names, actions) = term.split_at(at);
        let names = if names.is_empty() && actions.starts_with('=') { "all" } else { names };
        let mut mask = 0;
        for name in names.split(',') {
            mask |= mask_of(name).map_err(|e| format!("{term:?}: {e}"))?;
        }
        // After `+` a flag letter adds the capabilities to its set, after `-` it takes them
        // out; `=` first clears them from every set, then adds.
        let mut keep = u64::MAX;
        for action in actions.chars() {
            match action {
                '+' => keep = u64::MAX,
                '-' => keep = !mask,
                '=' => {
                    keep = u64::MAX;
                    permitted &= !mask;
                    inheritable &= !mask;
                    effective &= !mask;
                }
                'p' => permitted = (permitted | mask) & keep,
                'i' => inheritable = (inheritable | mask) & keep,
                'e' => effective = (effective | mask) & keep,
                other => return Err(format!("{term:?}: unknown flag '{other}'")),
            }
        }
    }
    if permitted == 0 && inheritable == 0 {
        return Ok(None);
    }
    const REVISION_2: u32 = 0x0200_0000;
    const EFFECTIVE: u32 = 1;
    let magic = REVISION_2 | if effective != 0 { EFFECTIVE } else { 0 };
    let words = [magic, permitted as u32, inheritable as u32, (permitted >> 32) as u32, (inheritable >> 32) as u32];
    Ok(Some(words.iter().flat_map(|word| word.to_le_bytes()).collect()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caps(terms: &[&str]) -> Result<Option<Vec<u8>>, String> {
        file_capabilities(&terms.iter().map(|t| t.to_string()).collect::<Vec<_>>())
    }

    fn words(bytes: &[u8]) -> Vec<u32> {
        bytes.chunks(4).map(|w| u32::from_le_bytes(w.try_into().unwrap())).collect()
    }

    #[test]
    fn names_are_permitted_and_clauses_set_what_they_say() {
        // net_bind_service is capability 10: permitted only, not effective.
        assert_eq!(words(&caps(&["net_bind_service"]).unwrap().unwrap()), [0x0200_0000, 1 << 10, 0, 0, 0]);
        assert_eq!(caps(&["CAP_NET_BIND_SERVICE"]).unwrap(), caps(&["10"]).unwrap());
        // bpf (39) and perfmon (38) live in the high words; =ep makes them effective too.
        assert_eq!(
            words(&caps(&["bpf,perfmon,net_admin=ep"]).unwrap().unwrap()),
            [0x0200_0001, 1 << 12, 0, (1 << 7) | (1 << 6), 0]
        );
        assert_eq!(words(&caps(&["chown=pi"]).unwrap().unwrap()), [0x0200_0000, 1, 1, 0, 0]);
        // A later clause takes away what an earlier one gave.
        assert_eq!(words(&caps(&["chown,kill=p", "kill-p"]).unwrap().unwrap()), [0x0200_0000, 1, 0, 0, 0]);
        assert_eq!(caps(&["chown=p", "chown-p"]).unwrap(), None, "nothing granted: no attribute");
        assert_eq!(caps(&[]).unwrap(), None);
        assert_eq!(words(&caps(&["=p"]).unwrap().unwrap())[1..4], [u32::MAX, 0, (1 << 9) - 1]);
    }

    #[test]
    fn unknown_names_and_flags_are_refused() {
        assert_eq!(caps(&["net_bind"]).unwrap_err(), "unknown capability \"net_bind\"");
        assert_eq!(caps(&["chown=px"]).unwrap_err(), "\"chown=px\": unknown flag 'x'");
        assert!(caps(&["nope=p"]).unwrap_err().contains("unknown capability \"nope\""));
    }
}
