//! `-o key=value,...` writer options, in qemu-img's syntax (`,,` escapes a comma).

use std::collections::BTreeMap;

use crate::error::{Error, Result};
use crate::model::Format;

/// Writer options as given; each format takes the keys it knows, and [`WriterOptions::finish`]
/// refuses any left over.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WriterOptions {
    values: BTreeMap<String, String>,
}

impl WriterOptions {
    /// No options.
    pub fn new() -> Self {
        WriterOptions::default()
    }

    /// Parse `key=value,key=value`; `,,` stands for a literal comma. Later keys win.
    pub fn parse(spec: &str) -> Result<WriterOptions> {
        let mut opts = WriterOptions::new();
        opts.extend(spec)?;
        Ok(opts)
    }

    /// Add the options of another `-o` argument.
    pub fn extend(&mut self, spec: &str) -> Result<()> {
        let mut items = Vec::new();
        let mut cur = String::new();
        let mut chars = spec.chars().peekable();
        while let Some(c) = chars.next() {
            if c == ',' {
                if chars.peek() == Some(&',') {
                    chars.next();
                    cur.push(',');
                } else {
                    items.push(std::mem::take(&mut cur));
                }
            } else {
                cur.push(c);
            }
        }
        items.push(cur);
        for item in items.into_iter().filter(|i| !i.is_empty()) {
            let (k, v) = item.split_once('=').ok_or_else(|| {
                Error::invalid_argument(format!("option '{item}' is not of the form key=value"))
            })?;
            let k = k.trim();
            if k.is_empty() {
                return Err(Error::invalid_argument(format!(
                    "option '{item}' has no key"
                )));
            }
            self.values.insert(k.to_string(), v.to_string());
        }
        Ok(())
    }

    /// Set one option.
    pub fn set(&mut self, key: &str, value: &str) {
        self.values.insert(key.to_string(), value.to_string());
    }

    /// Take the value of `key`, if given.
    pub fn take(&mut self, key: &str) -> Option<String> {
        self.values.remove(key)
    }

    /// Take and parse `key`.
    pub fn take_parsed<T: std::str::FromStr<Err = Error>>(
        &mut self,
        key: &str,
    ) -> Result<Option<T>> {
        self.take(key).map(|v| v.parse::<T>()).transpose()
    }

    /// Take `compression_level`: libdeflate's 1 to 12, `default` when absent.
    pub(crate) fn take_level(&mut self, default: i32) -> Result<i32> {
        match self.take("compression_level") {
            None => Ok(default),
            Some(l) => l
                .parse::<i32>()
                .ok()
                .filter(|l| (1..=12).contains(l))
                .ok_or_else(|| {
                    Error::invalid_argument(format!("compression_level '{l}' is not 1 to 12"))
                }),
        }
    }

    /// Refuse any option the format did not take.
    pub fn finish(self, format: Format, known: &[&str]) -> Result<()> {
        match self.values.keys().next() {
            None => Ok(()),
            Some(k) => Err(Error::invalid_argument(format!(
                "unknown option '{k}' for {format} output (known: {})",
                if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                }
            ))),
        }
    }
}

/// `64K`, `2M`, `4096`: a size with an optional binary suffix (K, M, G).
pub fn parse_size(s: &str) -> Result<u64> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let m = match c.to_ascii_uppercase() {
                'K' => 1u64 << 10,
                'M' => 1 << 20,
                'G' => 1 << 30,
                _ => 0,
            };
            (&s[..i], m)
        }
        _ => (s, 1),
    };
    num.parse::<u64>()
        .ok()
        .filter(|_| mult != 0)
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(|| Error::invalid_argument(format!("'{s}' is not a size")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_pairs_and_escaped_commas() -> Result<()> {
        let mut o = WriterOptions::parse("a=1,b=x,,y,c=")?;
        assert_eq!(o.take("a").as_deref(), Some("1"));
        assert_eq!(o.take("b").as_deref(), Some("x,y"));
        assert_eq!(o.take("c").as_deref(), Some(""));
        o.finish(Format::Raw, &[])
    }

    #[test]
    fn leftover_keys_are_refused_with_the_known_ones_named() {
        let o = WriterOptions::parse("colour=blue").ok();
        let err = o.map(|o| o.finish(Format::Raw, &["preallocation"]));
        let msg = err
            .and_then(|r| r.err())
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            msg.contains("colour") && msg.contains("preallocation"),
            "{msg}"
        );
    }

    #[test]
    fn an_item_without_equals_is_refused() {
        assert!(WriterOptions::parse("novalue").is_err());
    }
}
