//! A minimal, fully deterministic tar writer (ustar, PAX for names ustar cannot hold), writing
//! byte for byte what Go's archive/tar writes for the same headers, so ko's layers.
//! Written by hand so every byte is under our control, as ko's layers are:
//! names exactly as given (ko writes `/ko-app/x`), fixed modes, owners and times.

use std::io::{self, Write};

const BLOCK: usize = 512;
/// The typeflag of a PAX extended header (records for the entry after it).
const PAX_TYPEFLAG: u8 = b'x';

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    File,
    Directory,
}

#[derive(Debug, Clone)]
pub struct EntryHeader<'a> {
    pub name: &'a str,
    pub kind: EntryKind,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub size: u64,
    pub mtime: u64,
}

impl<'a> EntryHeader<'a> {
    /// ko's entries: mode 0555, owned by 0:0 with empty names.
    pub fn ko(name: &'a str, kind: EntryKind, size: u64, mtime: u64) -> Self {
        EntryHeader { name, kind, mode: 0o555, uid: 0, gid: 0, size, mtime }
    }
}

pub struct TarWriter<W: Write> {
    out: W,
}

fn write_octal(field: &mut [u8], value: u64) -> io::Result<()> {
    let digits = field.len() - 1;
    let text = format!("{value:0digits$o}");
    if text.len() > digits {
        return Err(io::Error::other(format!("value {value} does not fit a tar header field")));
    }
    field[..digits].copy_from_slice(text.as_bytes());
    field[digits] = 0;
    Ok(())
}

/// Where Go's archive/tar puts a name in a ustar header: whole when it is ASCII and fits the
/// 100-byte field, else split at the last '/' of its first 156 bytes into a prefix (≤155) and a
/// name (1–100), when that works (Go's `splitUSTARPath`). None: only PAX can hold it.
fn split_ustar_name(name: &str) -> Option<(&str, &str)> {
    if !name.is_ascii() {
        return None;
    }
    if name.len() <= 100 {
        return Some(("", name));
    }
    let mut length = name.len().min(156);
    if name.len() <= 156 && name.as_bytes()[length - 1] == b'/' {
        length -= 1;
    }
    let i = name[..length].rfind('/')?;
    let (prefix, rest) = (&name[..i], &name[i + 1..]);
    (i > 0 && !rest.is_empty() && rest.len() <= 100 && prefix.len() <= 155).then_some((prefix, rest))
}

/// One PAX record: `<length> <key>=<value>\n`, the length counting itself.
fn pax_record(key: &str, value: &[u8]) -> Vec<u8> {
    let rest = key.len() + value.len() + 3;
    let mut len = rest + 1;
    while len.to_string().len() + rest != len {
        len += 1;
    }
    let mut record = format!("{len} {key}=").into_bytes();
    record.extend_from_slice(value);
    record.push(b'\n');
    record
}

/// Go's `toASCII`: the name without its non-ASCII characters (and NULs), as archive/tar writes
/// it in the fields of a PAX entry.
fn ascii_only(name: &str) -> String {
    name.chars().filter(|c| c.is_ascii() && *c != '\0').collect()
}

impl<W: Write> TarWriter<W> {
    pub fn new(out: W) -> Self {
        TarWriter { out }
    }

    fn raw_header(
        &mut self,
        name: &str,
        prefix: &str,
        typeflag: u8,
        entry: &EntryHeader<'_>,
        size: u64,
    ) -> io::Result<()> {
        let mut block = [0u8; BLOCK];
        block[..name.len()].copy_from_slice(name.as_bytes());
        write_octal(&mut block[100..108], u64::from(entry.mode))?;
        write_octal(&mut block[108..116], entry.uid)?;
        write_octal(&mut block[116..124], entry.gid)?;
        write_octal(&mut block[124..136], size)?;
        write_octal(&mut block[136..148], entry.mtime)?;
        block[156] = typeflag;
        block[257..263].copy_from_slice(b"ustar\0");
        block[263..265].copy_from_slice(b"00");
        if typeflag != PAX_TYPEFLAG {
            // Go's archive/tar (so ko) writes the device numbers as octal zeros in every entry
            // but the PAX record file; left as NULs the layer would not be ko's byte for byte.
            write_octal(&mut block[329..337], 0)?;
            write_octal(&mut block[337..345], 0)?;
        }
        block[345..345 + prefix.len()].copy_from_slice(prefix.as_bytes());
        // The checksum is computed with its own field read as spaces.
        block[148..156].copy_from_slice(b"        ");
        let sum: u64 = block.iter().map(|&b| u64::from(b)).sum();
        let text = format!("{sum:06o}\0 ");
        block[148..156].copy_from_slice(text.as_bytes());
        self.out.write_all(&block)
    }

    fn pad(&mut self, size: u64) -> io::Result<()> {
        let rem = (size % BLOCK as u64) as usize;
        if rem != 0 {
            self.out.write_all(&[0u8; BLOCK][..BLOCK - rem])?;
        }
        Ok(())
    }

    pub fn append_header(&mut self, entry: &EntryHeader<'_>) -> io::Result<()> {
        self.append_header_with(entry, &[])
    }

    /// The entry's header, with PAX `records` (key, value) for it when there are any.
    pub fn append_header_with(&mut self, entry: &EntryHeader<'_>, records: &[(&str, &[u8])]) -> io::Result<()> {
        let typeflag = match entry.kind {
            EntryKind::File => b'0',
            EntryKind::Directory => b'5',
        };
        let size = if entry.kind == EntryKind::File { entry.size } else { 0 };
        let ustar = split_ustar_name(entry.name);
        if let (Some((prefix, name)), true) = (ustar, records.is_empty()) {
            return self.raw_header(name, prefix, typeflag, entry, size);
        }
        // As Go's archive/tar writes an entry with PAX records (the path among them when ustar
        // cannot hold it): a record file named `<dir>/PaxHeaders.0/<base>` (cut to 100 bytes,
        // all its other fields zero), its records sorted by key, then the entry with the
        // name's first 100 bytes and no prefix.
        let mut all: Vec<(&str, &[u8])> = records.to_vec();
        if ustar.is_none() {
            all.push(("path", entry.name.as_bytes()));
        }
        all.sort_by_key(|(key, _)| *key);
        let mut body = Vec::new();
        for (key, value) in all {
            body.extend_from_slice(&pax_record(key, value));
        }
        let pax_name = match entry.name.rsplit_once('/') {
            Some((dir, base)) => format!("{dir}/PaxHeaders.0/{base}"),
            None => format!("PaxHeaders.0/{}", entry.name),
        };
        let pax_name = ascii_only(&pax_name);
        let pax_name = pax_name[..pax_name.len().min(100)].trim_end_matches('/');
        let pax_entry = EntryHeader { name: "", kind: EntryKind::File, mode: 0, uid: 0, gid: 0, size: 0, mtime: 0 };
        self.raw_header(pax_name, "", PAX_TYPEFLAG, &pax_entry, body.len() as u64)?;
        self.out.write_all(&body)?;
        self.pad(body.len() as u64)?;
        // A name that would end in '/' at its 100th byte ends before its last slashes instead
        // (Go's guard for readers that would take it for a directory), the bytes after that
        // NUL left as they were.
        let ascii = ascii_only(entry.name);
        let mut short = ascii.as_bytes()[..ascii.len().min(100)].to_vec();
        if ascii.len() > 100 && short[99] == b'/' {
            let kept = ascii[..99].trim_end_matches('/').len();
            short[kept] = 0;
        }
        self.raw_header(&String::from_utf8_lossy(&short), "", typeflag, entry, size)
    }

    pub fn append_file(&mut self, entry: &EntryHeader<'_>, mut content: impl io::Read) -> io::Result<()> {
        self.append_header(entry)?;
        let copied = io::copy(&mut content, &mut self.out)?;
        if copied != entry.size {
            return Err(io::Error::other(format!("{} changed size while being archived", entry.name)));
        }
        self.pad(entry.size)
    }

    /// The writer, without the end-of-archive trailer (for a caller that appends content itself).
    pub fn into_inner(self) -> W {
        self.out
    }

    pub fn finish(mut self) -> io::Result<W> {
        self.out.write_all(&[0u8; BLOCK * 2])?;
        Ok(self.out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tar_crate_reads_what_we_write() {
        let mut tw = TarWriter::new(Vec::new());
        tw.append_header(&EntryHeader::ko("/ko-app", EntryKind::Directory, 0, 0)).unwrap();
        tw.append_file(&EntryHeader::ko("/ko-app/hello", EntryKind::File, 5, 0), &b"hello"[..]).unwrap();
        let long = format!("/var/run/ko/{}/file.txt", "d".repeat(200));
        tw.append_file(&EntryHeader::ko(&long, EntryKind::File, 1, 0), &b"x"[..]).unwrap();
        let bytes = tw.finish().unwrap();
        let mut archive = tar::Archive::new(&bytes[..]);
        let entries: Vec<(String, u32, u64)> = archive
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (e.path().unwrap().display().to_string(), e.header().mode().unwrap(), e.header().mtime().unwrap())
            })
            .collect();
        assert_eq!(entries[0], ("/ko-app".to_string(), 0o555, 0));
        assert_eq!(entries[1].0, "/ko-app/hello");
        assert_eq!(entries[2].0, long);
    }
}
