//! The MessagePack side, minimal: a reader that walks maps and skips what it does not need
//! (for the hot path and for publisher replies), and the few writers the requests need.

use crate::codec::{Scan, json_uint_after};

/// Scan a server frame for a bench `msg`: `op` and `data.t`/`data.s`, skipping everything else.
pub(crate) fn scan(p: &[u8]) -> Scan {
    let mut r = Mp { b: p, i: 0 };
    let Some(n) = r.map_len() else {
        return Scan::Other;
    };
    let mut is_msg = false;
    let mut ts = None;
    for _ in 0..n {
        let Some(k) = r.str() else { return Scan::Other };
        match k {
            b"op" => match r.str() {
                Some(v) => is_msg = v == b"msg",
                None => return Scan::Other,
            },
            b"data" => {
                ts = r.data_ts();
            }
            _ => {
                if r.skip(0).is_none() {
                    return Scan::Other;
                }
            }
        }
    }
    match (is_msg, ts) {
        (true, Some((t, s))) => Scan::Msg { t, s },
        (true, None) => Scan::ForeignMsg,
        _ => Scan::Other,
    }
}

/// For publisher replies: (is ok, id).
pub(crate) fn scan_reply(p: &[u8]) -> Option<(bool, u64)> {
    let mut r = Mp { b: p, i: 0 };
    let n = r.map_len()?;
    let (mut op, mut id) = (None, 0);
    for _ in 0..n {
        match r.str()? {
            b"op" => op = Some(r.str()?.to_vec()),
            b"id" => id = r.uint()?,
            _ => r.skip(0)?,
        }
    }
    match op.as_deref() {
        Some(b"ok") => Some((true, id)),
        Some(b"error") => Some((false, id)),
        _ => None,
    }
}

/// Minimal MessagePack reader.
struct Mp<'a> {
    b: &'a [u8],
    i: usize,
}

impl<'a> Mp<'a> {
    fn u8(&mut self) -> Option<u8> {
        let v = *self.b.get(self.i)?;
        self.i += 1;
        Some(v)
    }
    fn be(&mut self, n: usize) -> Option<u64> {
        let s = self.b.get(self.i..self.i + n)?;
        self.i += n;
        Some(s.iter().fold(0u64, |a, &x| (a << 8) | x as u64))
    }
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let s = self.b.get(self.i..self.i.checked_add(n)?)?;
        self.i += n;
        Some(s)
    }
    fn map_len(&mut self) -> Option<usize> {
        match self.u8()? {
            m @ 0x80..=0x8f => Some((m & 0x0f) as usize),
            0xde => self.be(2).map(|v| v as usize),
            0xdf => self.be(4).map(|v| v as usize),
            _ => None,
        }
    }
    fn str(&mut self) -> Option<&'a [u8]> {
        let n = match self.u8()? {
            m @ 0xa0..=0xbf => (m & 0x1f) as usize,
            0xd9 | 0xc4 => self.be(1)? as usize,
            0xda | 0xc5 => self.be(2)? as usize,
            0xdb | 0xc6 => self.be(4)? as usize,
            _ => return None,
        };
        self.take(n)
    }
    fn uint(&mut self) -> Option<u64> {
        match self.u8()? {
            v @ 0x00..=0x7f => Some(v as u64),
            0xcc => self.be(1),
            0xcd => self.be(2),
            0xce => self.be(4),
            0xcf => self.be(8),
            0xd0 => self.be(1).filter(|v| *v < 0x80),
            0xd1 => self.be(2).filter(|v| *v < 0x8000),
            0xd2 => self.be(4).filter(|v| *v < 0x8000_0000),
            0xd3 => self.be(8).filter(|v| *v < 1 << 63),
            _ => None,
        }
    }
    /// `data`: a map with `t` and `s`, or a string/bin holding JSON (tolerated).
    fn data_ts(&mut self) -> Option<(u64, u64)> {
        let save = self.i;
        if let Some(n) = self.map_len() {
            let (mut t, mut s) = (None, None);
            for _ in 0..n {
                match self.str()? {
                    b"t" => t = Some(self.uint()?),
                    b"s" => s = Some(self.uint()?),
                    _ => self.skip(0)?,
                }
            }
            return Some((t?, s?));
        }
        self.i = save;
        let raw = self.str()?;
        Some((
            json_uint_after(raw, br#""t":"#)?,
            json_uint_after(raw, br#""s":"#)?,
        ))
    }
    /// Skip one value of any type (depth-bounded).
    fn skip(&mut self, depth: u32) -> Option<()> {
        if depth > 32 {
            return None;
        }
        let m = self.u8()?;
        let skip_n = |me: &mut Self, n: usize| me.take(n).map(|_| ());
        match m {
            0x00..=0x7f | 0xe0..=0xff | 0xc0 | 0xc2 | 0xc3 => Some(()),
            0x80..=0x8f => self.skip_items(2 * (m & 0x0f) as usize, depth),
            0x90..=0x9f => self.skip_items((m & 0x0f) as usize, depth),
            0xa0..=0xbf => skip_n(self, (m & 0x1f) as usize),
            0xc4 | 0xd9 => {
                let n = self.be(1)? as usize;
                skip_n(self, n)
            }
            0xc5 | 0xda => {
                let n = self.be(2)? as usize;
                skip_n(self, n)
            }
            0xc6 | 0xdb => {
                let n = self.be(4)? as usize;
                skip_n(self, n)
            }
            0xc7 => {
                let n = self.be(1)? as usize;
                skip_n(self, n + 1)
            }
            0xc8 => {
                let n = self.be(2)? as usize;
                skip_n(self, n + 1)
            }
            0xc9 => {
                let n = self.be(4)? as usize;
                skip_n(self, n + 1)
            }
            0xca => skip_n(self, 4),
            0xcb => skip_n(self, 8),
            0xcc | 0xd0 => skip_n(self, 1),
            0xcd | 0xd1 => skip_n(self, 2),
            0xce | 0xd2 => skip_n(self, 4),
            0xcf | 0xd3 => skip_n(self, 8),
            0xd4 => skip_n(self, 2),
            0xd5 => skip_n(self, 3),
            0xd6 => skip_n(self, 5),
            0xd7 => skip_n(self, 9),
            0xd8 => skip_n(self, 17),
            0xdc => {
                let n = self.be(2)? as usize;
                self.skip_items(n, depth)
            }
            0xdd => {
                let n = self.be(4)? as usize;
                self.skip_items(n, depth)
            }
            0xde => {
                let n = self.be(2)? as usize;
                self.skip_items(2 * n, depth)
            }
            0xdf => {
                let n = self.be(4)? as usize;
                self.skip_items(2 * n, depth)
            }
            0xc1 => None,
        }
    }
    fn skip_items(&mut self, n: usize, depth: u32) -> Option<()> {
        for _ in 0..n {
            self.skip(depth + 1)?;
        }
        Some(())
    }
}

pub(crate) fn mp_data(out: &mut Vec<u8>, t: u64, s: u64, pad: usize) {
    mp_map(out, if pad > 0 { 3 } else { 2 });
    mp_str(out, "t");
    mp_uint(out, t);
    mp_str(out, "s");
    mp_uint(out, s);
    if pad > 0 {
        mp_str(out, "p");
        mp_str_len(out, pad);
        out.resize(out.len() + pad, b'x');
    }
}

pub(crate) fn mp_map(o: &mut Vec<u8>, n: usize) {
    if n < 16 {
        o.push(0x80 | n as u8);
    } else {
        o.push(0xde);
        o.extend_from_slice(&(n as u16).to_be_bytes());
    }
}

pub(crate) fn mp_str_len(o: &mut Vec<u8>, n: usize) {
    if n < 32 {
        o.push(0xa0 | n as u8);
    } else if n < 256 {
        o.extend_from_slice(&[0xd9, n as u8]);
    } else if n < 65536 {
        o.push(0xda);
        o.extend_from_slice(&(n as u16).to_be_bytes());
    } else {
        o.push(0xdb);
        o.extend_from_slice(&(n as u32).to_be_bytes());
    }
}

pub(crate) fn mp_str(o: &mut Vec<u8>, s: &str) {
    mp_str_len(o, s.len());
    o.extend_from_slice(s.as_bytes());
}

pub(crate) fn mp_uint(o: &mut Vec<u8>, v: u64) {
    if v < 128 {
        o.push(v as u8);
    } else if v < 256 {
        o.extend_from_slice(&[0xcc, v as u8]);
    } else if v < 65536 {
        o.push(0xcd);
        o.extend_from_slice(&(v as u16).to_be_bytes());
    } else if v < 1 << 32 {
        o.push(0xce);
        o.extend_from_slice(&(v as u32).to_be_bytes());
    } else {
        o.push(0xcf);
        o.extend_from_slice(&v.to_be_bytes());
    }
}
