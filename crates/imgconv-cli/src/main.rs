//! The `imgconv` command.

mod args;
mod commands;
mod progress;

use std::process::ExitCode;

use clap::Parser;
use imgconv::{Error, ErrorKind};

use crate::args::{with_default_subcommand, Cli, Command};

fn main() -> ExitCode {
    let argv = with_default_subcommand(std::env::args_os().collect());
    let cli = Cli::parse_from(argv);
    let outcome = match cli.command {
        Command::Convert(a) => commands::convert(a),
        Command::Info(a) => commands::info(a),
        Command::Compare(a) => commands::compare(a),
        Command::Measure(a) => commands::measure(a),
        Command::Map(a) => commands::map(a),
        Command::Check(a) => commands::check(a),
        Command::Export(a) => commands::export_api(a),
        Command::Images(a) => commands::images(a),
        Command::Serve(a) => imgconv_server::run_file(&a.config)
            .map(|()| 0)
            .map_err(commands::Failure::from),
    };
    match outcome {
        Ok(code) => ExitCode::from(code),
        Err(failure) => {
            report(&failure.error);
            ExitCode::from(failure.code)
        }
    }
}

/// Print one clear line: the error, then its causes.
fn report(err: &Error) {
    let mut line = format!("imgconv: {}", err.to_string_with_causes());
    // The library says overwriting was not asked for; the command line says how to ask.
    if err.kind() == ErrorKind::AlreadyExists && err.message().contains("was not asked for") {
        line.push_str(" (use --force)");
    }
    eprintln!("{line}");
}

/// The exit code of an error kind (documented in the README and `--help`).
pub(crate) fn exit_code(kind: ErrorKind) -> u8 {
    match kind {
        ErrorKind::InvalidArgument => 2,
        ErrorKind::NotFound => 3,
        ErrorKind::NotAFile => 4,
        ErrorKind::AlreadyExists => 5,
        ErrorKind::Io => 6,
        ErrorKind::StorageFull => 7,
        ErrorKind::InvalidImage => 8,
        ErrorKind::Unsupported => 9,
        ErrorKind::LimitExceeded => 10,
        ErrorKind::Cancelled => 130,
        ErrorKind::AccessDenied => 11,
        ErrorKind::Internal => 12,
        _ => 6,
    }
}
