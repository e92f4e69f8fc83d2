//! `imgconv check`: an image's structures against the format's rules, with qemu-img check's
//! verdicts (corruptions, leaks) and counters.

use std::path::Path;

use serde::Serialize;

use crate::error::{ErrorKind, Result};
use crate::model::Format;
use crate::open::open_image;

/// Findings kept in a report at most; the counters go on past it.
pub const MAX_FINDINGS: usize = 1000;

/// What kind of problem a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Problem {
    /// The image's structures contradict each other: data may be lost or misread.
    Corruption,
    /// Space is allocated that nothing uses: harmless waste.
    Leak,
}

/// One problem found, naming the structure and the file offset it was found at.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// Corruption or leak.
    pub problem: Problem,
    /// The structure at fault ("refcount", "L2 table", "grain table", "BAT", ...).
    pub structure: String,
    /// Offset in the image file.
    pub offset: u64,
    /// What is wrong.
    pub message: String,
}

/// The outcome of a check, with `qemu-img check --output json`'s counters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct CheckReport {
    /// Problems found (at most [`MAX_FINDINGS`]).
    pub findings: Vec<Finding>,
    /// Corruptions found.
    pub corruptions: u64,
    /// Leaks found (clusters allocated and unused).
    pub leaks: u64,
    /// Errors that kept parts of the image from being checked.
    pub check_errors: u64,
    /// Where the image's last allocated cluster ends (QCOW2).
    pub image_end_offset: Option<u64>,
    /// Clusters of the virtual disk (QCOW2).
    pub total_clusters: Option<u64>,
    /// Virtual clusters allocated (QCOW2).
    pub allocated_clusters: Option<u64>,
    /// Allocated clusters not stored right after the previous one (QCOW2).
    pub fragmented_clusters: Option<u64>,
    /// Compressed clusters (QCOW2).
    pub compressed_clusters: Option<u64>,
}

impl CheckReport {
    /// Record a corruption of `structure` at file offset `offset`.
    pub(crate) fn corruption(&mut self, structure: &str, offset: u64, message: impl Into<String>) {
        self.corruptions += 1;
        self.push(Problem::Corruption, structure, offset, message.into());
    }

    /// Record a leak at file offset `offset`.
    pub(crate) fn leak(&mut self, structure: &str, offset: u64, message: impl Into<String>) {
        self.leaks += 1;
        self.push(Problem::Leak, structure, offset, message.into());
    }

    fn push(&mut self, problem: Problem, structure: &str, offset: u64, message: String) {
        if self.findings.len() < MAX_FINDINGS {
            self.findings.push(Finding {
                problem,
                structure: structure.to_string(),
                offset,
                message,
            });
        }
    }

    /// qemu-img check's exit code: 0 clean, 2 corruptions, 3 leaks only, 1 when parts of the
    /// image could not be checked.
    pub fn exit_code(&self) -> u8 {
        if self.check_errors > 0 {
            1
        } else if self.corruptions > 0 {
            2
        } else if self.leaks > 0 {
            3
        } else {
            0
        }
    }
}

/// Check the image at `path` (as `format`, or as detected). An image whose structures the
/// reader refuses as invalid is a corruption, reported as a finding; an image that cannot be
/// read at all (missing, unsupported, an I/O error) is an error.
pub fn check_image(
    path: impl AsRef<Path>,
    format: Option<Format>,
) -> Result<(Format, CheckReport)> {
    let path = path.as_ref();
    let mut report = CheckReport::default();
    // A structure the reader refuses, at opening or during the check, is a corruption.
    let refused = |report: &mut CheckReport, e: &crate::error::Error, format: Format| {
        let structure = format!("{format} metadata");
        report.corruption(&structure, e.context().offset.unwrap_or(0), e.message());
    };
    match open_image(path, format) {
        Ok(reader) => {
            let format = reader.format();
            match reader.check(&mut report) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::InvalidImage => refused(&mut report, &e, format),
                Err(e) => return Err(e),
            }
            Ok((format, report))
        }
        Err(e) if e.kind() == ErrorKind::InvalidImage => {
            let format = e.context().format.or(format).unwrap_or(Format::Raw);
            refused(&mut report, &e, format);
            Ok((format, report))
        }
        Err(e) => Err(e),
    }
}
