//! The subcommands: validated configuration first, then library calls, then output.

use std::path::{Path, PathBuf};

use imgconv::{
    open_image, CancelToken, Comparison, ConvertOptions, Destination, DigestKind, Error, Format,
    NoProgress, Progress, Summary, WriteSink, WriterOptions,
};
use serde_json::json;

use imgconv_export::destination::{
    folder_target, parse_remote, resolve_endpoint, resolve_region, Remote, UploadSettings,
};
use imgconv_export::Target;

use crate::args::{
    ApiArgs, CheckArgs, CompareArgs, ConvertArgs, ExportArgs, InfoArgs, MapArgs, MeasureArgs,
    OutputMode, ProgressMode,
};
use crate::exit_code;
use crate::progress::{Bar, JsonLines};

/// An error with the exit code it ends the process with.
pub(crate) struct Failure {
    pub(crate) error: Error,
    pub(crate) code: u8,
}

impl From<Error> for Failure {
    fn from(error: Error) -> Self {
        let code = exit_code(error.kind());
        Failure { error, code }
    }
}

type CmdResult = Result<u8, Failure>;

/// A validated `convert` configuration.
struct ConvertPlan {
    input: PathBuf,
    input_format: Option<Format>,
    /// The disk of a package to convert (from 1).
    disk: usize,
    /// The file, or `None` for stdout (or an export).
    output: Option<PathBuf>,
    /// An export to object storage or a published folder.
    target: Option<Target>,
    scratch_dir: PathBuf,
    options: ConvertOptions,
    progress: ProgressMode,
    force: bool,
    sync: bool,
    output_mode: OutputMode,
}

fn parse_format(name: Option<&str>) -> Result<Option<Format>, Error> {
    name.map(str::parse::<Format>).transpose()
}

fn writer_options(specs: &[String]) -> Result<WriterOptions, Error> {
    let mut opts = WriterOptions::new();
    for s in specs {
        opts.extend(s)?;
    }
    Ok(opts)
}

/// The upload settings the flags give.
fn upload_settings(e: &ExportArgs, force: bool) -> Result<UploadSettings, Error> {
    Ok(UploadSettings {
        endpoint: e.endpoint.clone(),
        region: e.region.clone(),
        virtual_hosted: e.virtual_hosted,
        no_crc32c: e.no_crc32c,
        part_size: e
            .part_size
            .as_deref()
            .map(imgconv::parse_size)
            .transpose()?,
        parallel_parts: e.parallel_parts,
        retries: e.retries,
        overwrite: force,
        ca_bundle: e.ca_bundle.clone(),
    })
}

/// The export target the arguments name, if any, and the name whose extension tells the
/// output format.
fn target(a: &ConvertArgs) -> Result<(Option<Target>, PathBuf), Error> {
    let e = &a.export;
    if let Some(remote) = parse_remote(&a.output_path)? {
        if e.publish_url.is_some() {
            return Err(Error::invalid_argument(
                "--publish-url applies to a file output, not to a bucket",
            ));
        }
        if matches!(remote, Remote::Par(_))
            && (e.endpoint.is_some() || e.region.is_some() || e.virtual_hosted || e.no_crc32c)
        {
            return Err(Error::invalid_argument(
                "--endpoint, --region, --virtual-hosted and --no-crc32c apply to s3:// outputs, \
                 not to a pre-authenticated request URL",
            ));
        }
        if let Remote::S3 { scheme, .. } = &remote {
            if scheme != "s3" && resolve_endpoint(e.endpoint.as_deref()).is_none() {
                return Err(Error::invalid_argument(format!(
                    "{scheme}:// needs --endpoint or $AWS_ENDPOINT_URL_S3 (OBS: \
                     https://obs.REGION.myhuaweicloud.com; OCI: \
                     https://NAMESPACE.compat.objectstorage.REGION.oraclecloud.com)"
                )));
            }
        }
        let name = remote.name();
        let target = upload_settings(e, a.force)?.target(remote)?;
        return Ok((Some(target), name));
    }
    if e.upload_options_given() {
        return Err(Error::invalid_argument(
            "--endpoint, --region, --virtual-hosted, --part-size, --parallel-parts, \
             --retries, --no-crc32c, --scratch-dir and --ca-bundle apply to s3://, obs://, oci:// \
             and pre-authenticated request outputs",
        ));
    }
    let Some(base) = &e.publish_url else {
        return Ok((None, a.output_path.clone()));
    };
    if a.output_path.as_os_str() == "-" {
        return Err(Error::invalid_argument(
            "--publish-url needs a file output, not stdout",
        ));
    }
    let target = folder_target(&a.output_path, base, a.force).map_err(|_| {
        Error::invalid_argument(format!(
            "--publish-url '{base}' is not an http(s) URL, or the output has no UTF-8 file name"
        ))
    })?;
    Ok((Some(target), a.output_path.clone()))
}

fn validate(a: ConvertArgs) -> Result<ConvertPlan, Error> {
    let input_format = parse_format(a.input_format.as_deref())?;
    let to_stdout = a.output_path.as_os_str() == "-";
    let (target, named) = target(&a)?;
    let format = match parse_format(a.output_format.as_deref())? {
        Some(f) => f,
        None if to_stdout => {
            return Err(Error::invalid_argument(
                "writing to stdout needs the output format: add -O FMT",
            ))
        }
        None => format_from_extension(&named)?,
    };
    let mut options = ConvertOptions::new(format);
    options.writer_options = writer_options(&a.options)?;
    options.compress = a.compress;
    options.deterministic = deterministic(a.deterministic)?;
    if let Some(size) = &a.chunk_size {
        let n = imgconv::parse_size(size)?;
        if !(4096..=(1 << 30)).contains(&n) {
            return Err(Error::invalid_argument(format!(
                "--chunk-size {size} is not between 4K and 1G"
            )));
        }
        options.pipeline.chunk_size = n;
    }
    if let Some(list) = &a.digest {
        options.digests = DigestKind::parse_list(list)?;
    }
    let progress = match (a.progress, a.progress_bar) {
        (Some(mode), _) => mode,
        (None, true) => ProgressMode::Bar,
        (None, false) => ProgressMode::None,
    };
    set_threads(a.common.threads)?;
    let scratch_dir = a
        .export
        .scratch_dir
        .clone()
        .unwrap_or_else(std::env::temp_dir);
    Ok(ConvertPlan {
        input: a.input,
        input_format,
        disk: a.disk,
        output: (!to_stdout && target.is_none()).then_some(a.output_path),
        target,
        scratch_dir,
        options,
        progress,
        force: a.force,
        sync: !a.no_sync,
        output_mode: a.output,
    })
}

fn format_from_extension(path: &Path) -> Result<Format, Error> {
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    let name = path.to_string_lossy().to_ascii_lowercase();
    if name.ends_with(".tar.gz") {
        return Ok(Format::Gce);
    }
    Format::from_extension(ext).ok_or_else(|| {
        let shown = if ext.is_empty() {
            "no extension".to_string()
        } else {
            format!("the extension '.{ext}'")
        };
        Error::invalid_argument(format!(
            "cannot tell the output format from {shown}: name it with -O FMT \
             (raw, qcow2, vmdk, vhd, vdi, vhdx, ova, gce) or use one of .raw .img .qcow2 \
             .vmdk .vhd .vdi .vhdx .ova .tar.gz"
        ))
        .with_path(path)
    })
}

fn set_threads(threads: Option<usize>) -> Result<(), Error> {
    if let Some(n) = threads {
        if n == 0 {
            return Err(Error::invalid_argument("--threads must be at least 1"));
        }
        rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global()
            .map_err(|e| {
                Error::invalid_argument(format!("cannot start {n} threads")).with_source(e)
            })?;
    }
    Ok(())
}

/// Cancel on SIGINT, SIGTERM or SIGHUP; a second signal exits at once.
fn install_signal_handler(cancel: &CancelToken) {
    let token = cancel.clone();
    let _ = ctrlc::set_handler(move || {
        if token.is_cancelled() {
            std::process::exit(130);
        }
        token.cancel();
    });
}

fn make_progress(mode: ProgressMode) -> Box<dyn Progress> {
    match mode {
        ProgressMode::None => Box::new(NoProgress),
        ProgressMode::Bar => Box::new(Bar::new()),
        ProgressMode::Json => Box::new(JsonLines::new()),
    }
}

pub(crate) fn convert(args: ConvertArgs) -> CmdResult {
    let plan = validate(args)?;
    let reader = imgconv::open_image_disk(&plan.input, plan.input_format, plan.disk)?;
    let cancel = CancelToken::new();
    install_signal_handler(&cancel);
    let progress = make_progress(plan.progress);
    if let Some(target) = &plan.target {
        let done = imgconv_export::export(
            &*reader,
            target,
            &plan.options,
            &plan.scratch_dir,
            &*progress,
            &cancel,
        )?;
        print_summary(&plan, &done.summary, Some(&done.location));
        return Ok(0);
    }
    let dest = match &plan.output {
        Some(path) => Destination::File {
            path: path.clone(),
            overwrite: plan.force,
            sync: plan.sync,
        },
        None => Destination::Sink(Box::new(WriteSink::new(std::io::BufWriter::with_capacity(
            1 << 20,
            std::io::stdout(),
        )))),
    };
    let summary = imgconv::convert(&*reader, dest, &plan.options, &*progress, &cancel)?;
    print_summary(&plan, &summary, None);
    Ok(0)
}

/// Print the result; `location` is where an export put the object.
fn print_summary(plan: &ConvertPlan, s: &Summary, location: Option<&str>) {
    let name = match location {
        Some(l) => l.to_string(),
        None => s
            .digested_file
            .as_ref()
            .or(plan.output.as_ref())
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "-".into()),
    };
    let to_stdout = plan.output.is_none() && location.is_none();
    match plan.output_mode {
        OutputMode::Json => {
            let digests: serde_json::Map<String, serde_json::Value> = s
                .digests
                .iter()
                .map(|d| (d.kind.name().to_string(), json!(d.hex)))
                .collect();
            let doc = json!({
                "input": plan.input.display().to_string(),
                "output": name,
                "input-format": s.input_format,
                "output-format": s.output_format,
                "virtual-size": s.virtual_size,
                "output-size": s.output_size,
                "allocated-units": s.allocated_units,
                "unit-size": s.unit_size,
                "digests": digests,
                "seconds": s.seconds,
                "notes": s.notes,
            });
            let mut doc = doc;
            if let Some(l) = location {
                doc["url"] = json!(l);
            }
            emit_result(to_stdout, &doc.to_string());
        }
        OutputMode::Human => {
            for note in &s.notes {
                eprintln!("imgconv: note: {note}");
            }
            // BSD-style tagged lines, which `md5sum -c` and `sha256sum -c` verify.
            let lines: Vec<String> = s
                .digests
                .iter()
                .map(|d| format!("{} ({name}) = {}", d.kind.name().to_uppercase(), d.hex))
                .collect();
            if !lines.is_empty() {
                emit_result(to_stdout, &lines.join("\n"));
            }
        }
    }
}

/// Results go to stdout, unless stdout carries the image itself.
fn emit_result(stdout_is_data: bool, text: &str) {
    if stdout_is_data {
        eprintln!("{text}");
    } else {
        println!("{text}");
    }
}

pub(crate) fn info(args: InfoArgs) -> CmdResult {
    let format = parse_format(args.format.as_deref())?;
    let info = imgconv::inspect(&args.image, format)?;
    match args.output {
        OutputMode::Json => {
            let mut doc = json!({
                "filename": args.image.display().to_string(),
                "format": info.format,
                "virtual-size": info.virtual_size,
                "dirty-flag": false,
            });
            if let Some(actual) = info.actual_size {
                doc["actual-size"] = json!(actual);
            }
            if !info.details.is_empty() {
                let data: serde_json::Map<String, serde_json::Value> = info
                    .details
                    .iter()
                    .map(|(k, v)| (k.clone(), json!(v)))
                    .collect();
                doc["format-specific"] = json!({ "type": info.format, "data": data });
            }
            println!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
        }
        OutputMode::Human => {
            println!("image: {}", args.image.display());
            println!("file format: {}", info.format);
            println!(
                "virtual size: {} ({} bytes)",
                human_size(info.virtual_size),
                info.virtual_size
            );
            if let Some(actual) = info.actual_size {
                println!("disk size: {}", human_size(actual));
            }
            for (k, v) in &info.details {
                println!("{k}: {v}");
            }
        }
    }
    Ok(0)
}

/// Sizes as qemu-img prints them: three significant digits and a binary unit.
pub(crate) fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 7] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        return format!("{bytes} B");
    }
    let digits = if value >= 100.0 {
        0
    } else if value >= 10.0 {
        1
    } else {
        2
    };
    let text = format!("{value:.digits$}");
    let text = if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        text
    };
    format!("{text} {}", UNITS[unit])
}

/// The epoch of reproducible output: `$SOURCE_DATE_EPOCH` when set (which asks for it too),
/// else 0 with `--deterministic`; `None` for random ids and the current time.
fn deterministic(flag: bool) -> Result<Option<u64>, Error> {
    match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(v) => v.trim().parse::<u64>().map(Some).map_err(|_| {
            Error::invalid_argument(format!(
                "SOURCE_DATE_EPOCH '{v}' is not a number of seconds since 1970"
            ))
        }),
        Err(_) => Ok(flag.then_some(0)),
    }
}

/// `compare` exits 0 identical, 1 different, and 2 on any error (as qemu-img does).
pub(crate) fn compare(args: CompareArgs) -> CmdResult {
    let to_two = |e: Error| Failure { error: e, code: 2 };
    set_threads(args.common.threads).map_err(to_two)?;
    let fa = parse_format(args.format_a.as_deref()).map_err(to_two)?;
    let fb = parse_format(args.format_b.as_deref()).map_err(to_two)?;
    let a = open_image(&args.a, fa).map_err(to_two)?;
    let b = open_image(&args.b, fb).map_err(to_two)?;
    let cancel = CancelToken::new();
    install_signal_handler(&cancel);
    let outcome = imgconv::compare(&*a, &*b, &cancel).map_err(to_two)?;
    let say = |s: &str| {
        if !args.quiet {
            println!("{s}");
        }
    };
    let size_mismatch = match outcome {
        Comparison::Identical { size_mismatch } | Comparison::Mismatch { size_mismatch, .. } => {
            size_mismatch
        }
    };
    if size_mismatch {
        if args.strict {
            say("Strict mode: Image size mismatch!");
            return Ok(1);
        }
        say("Warning: Image size mismatch!");
    }
    match outcome {
        Comparison::Identical { .. } => {
            say("Images are identical.");
            Ok(0)
        }
        Comparison::Mismatch { offset, .. } => {
            say(&format!("Content mismatch at offset {offset}!"));
            Ok(1)
        }
    }
}

pub(crate) fn measure(args: MeasureArgs) -> CmdResult {
    set_threads(args.common.threads)?;
    let input_format = parse_format(args.input_format.as_deref())?;
    let mut options = ConvertOptions::new(args.output_format.parse::<Format>()?);
    options.writer_options = writer_options(&args.options)?;
    options.compress = args.compress;
    let reader = open_image(&args.input, input_format)?;
    let cancel = CancelToken::new();
    install_signal_handler(&cancel);
    let m = imgconv::measure(&*reader, &options, &cancel)?;
    match args.output {
        OutputMode::Json => println!(
            "{}",
            json!({
                "required": m.required,
                "fully-allocated": m.fully_allocated,
                "exact": m.exact,
            })
        ),
        OutputMode::Human => {
            if m.exact {
                println!("required size: {}", m.required);
            } else {
                println!(
                    "required size: {} (at most: the output is compressed)",
                    m.required
                );
            }
            println!("fully allocated size: {}", m.fully_allocated);
        }
    }
    Ok(0)
}

/// `imgconv check`: qemu-img check's exit codes (0 clean, 2 corruptions, 3 leaks only, 1 the
/// image could not be checked), JSON fields and human lines.
pub(crate) fn check(args: CheckArgs) -> CmdResult {
    let to_one = |e: Error| Failure { error: e, code: 1 };
    let format = parse_format(args.format.as_deref()).map_err(to_one)?;
    let (format, r) = imgconv::check_image(&args.image, format).map_err(to_one)?;
    if args.quiet {
        return Ok(r.exit_code());
    }
    match args.output {
        OutputMode::Json => {
            let mut doc = serde_json::Map::new();
            let mut put = |k: &str, v: Option<u64>| {
                if let Some(v) = v.filter(|&v| v != 0) {
                    doc.insert(k.into(), json!(v));
                }
            };
            put("image-end-offset", r.image_end_offset);
            put("total-clusters", r.total_clusters);
            put("allocated-clusters", r.allocated_clusters);
            put("fragmented-clusters", r.fragmented_clusters);
            put("compressed-clusters", r.compressed_clusters);
            put("corruptions", Some(r.corruptions));
            put("leaks", Some(r.leaks));
            doc.insert("check-errors".into(), json!(r.check_errors));
            doc.insert("filename".into(), json!(args.image.display().to_string()));
            doc.insert("format".into(), json!(format));
            doc.insert("findings".into(), json!(r.findings));
            println!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
        }
        OutputMode::Human => {
            for f in &r.findings {
                if f.message.starts_with("ERROR") || f.message.starts_with("Leaked") {
                    println!("{}", f.message);
                } else {
                    let word = match f.problem {
                        imgconv::Problem::Corruption => "ERROR",
                        imgconv::Problem::Leak => "Leaked",
                    };
                    println!("{word} {} at {:#x}: {}", f.structure, f.offset, f.message);
                }
            }
            let shown = r.findings.len() as u64;
            if r.corruptions + r.leaks > shown {
                println!("({} more not shown)", r.corruptions + r.leaks - shown);
            }
            if r.corruptions > 0 {
                println!(
                    "\n{} errors were found on the image.\nData may be corrupted, or further \
                     writes to the image may corrupt it.",
                    r.corruptions
                );
            }
            if r.leaks > 0 {
                println!(
                    "\n{} leaked clusters were found on the image.\nThis means waste of disk \
                     space, but no harm to data.",
                    r.leaks
                );
            }
            if r.corruptions == 0 && r.leaks == 0 {
                println!("No errors were found on the image.");
            }
            if let (Some(total), Some(alloc)) = (r.total_clusters, r.allocated_clusters) {
                if total > 0 {
                    let pct = |n: u64| n as f64 * 100.0 / total as f64;
                    let of_alloc = |n: u64| {
                        if alloc == 0 {
                            0.0
                        } else {
                            n as f64 * 100.0 / alloc as f64
                        }
                    };
                    println!(
                        "{alloc}/{total} = {:.2}% allocated, {:.2}% fragmented, {:.2}% compressed clusters",
                        pct(alloc),
                        of_alloc(r.fragmented_clusters.unwrap_or(0)),
                        of_alloc(r.compressed_clusters.unwrap_or(0)),
                    );
                }
            }
            if let Some(end) = r.image_end_offset {
                println!("Image end offset: {end}");
            }
        }
    }
    Ok(r.exit_code())
}

/// `imgconv map`: JSON as `qemu-img map --output json` prints it (an array, an entry a
/// line), or for people the stored ranges with their file offsets, as qemu-img prints them.
pub(crate) fn map(args: MapArgs) -> CmdResult {
    use std::io::Write;
    let format = parse_format(args.format.as_deref())?;
    let reader = open_image(&args.image, format)?;
    let cancel = CancelToken::new();
    install_signal_handler(&cancel);
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let io = |e: std::io::Error| Error::io("cannot write the map", e);
    let name = args.image.display().to_string();
    let mut first = true;
    match args.output {
        OutputMode::Json => {
            imgconv::map_image(&*reader, &cancel, |e| {
                let line = serde_json::to_string(e).unwrap_or_default();
                let lead = if first { "[" } else { ",\n" };
                first = false;
                write!(out, "{lead}{line}").map_err(io)
            })?;
            writeln!(out, "{}", if first { "[]" } else { "]" }).map_err(io)?;
        }
        OutputMode::Human => {
            writeln!(
                out,
                "{:<16}{:<16}{:<16}File",
                "Offset", "Length", "Mapped to"
            )
            .map_err(io)?;
            imgconv::map_image(&*reader, &cancel, |e| match e.offset {
                Some(at) if e.data => writeln!(
                    out,
                    "{:<16}{:<16}{:<16}{name}",
                    c_hex(e.start),
                    c_hex(e.length),
                    c_hex(at)
                )
                .map_err(io),
                _ => Ok(()),
            })?;
        }
    }
    out.flush().map_err(io)?;
    Ok(0)
}

/// A number as C's `%#x` prints it (qemu-img's map): `0`, or `0x` and the hex digits.
fn c_hex(n: u64) -> String {
    if n == 0 {
        "0".into()
    } else {
        format!("{n:#x}")
    }
}

/// A JSON file an option names (`what` says which, in errors): missing → not found (3),
/// not JSON → invalid argument (2).
fn read_json_file(path: &Path, what: &str) -> Result<serde_json::Value, Error> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::io(format!("cannot read the {what}"), e).with_path(path))?;
    serde_json::from_str(&text).map_err(|e| {
        Error::invalid_argument(format!("the {what} is not JSON"))
            .with_source(e)
            .with_path(path)
    })
}

/// The request file of `export --api`: JSON (the provider's semantics read it into its typed
/// request).
fn read_request_file(path: &Path) -> Result<Vec<u8>, Error> {
    read_json_file(path, "request").map(|v| v.to_string().into_bytes())
}

/// An OCI `image_metadata.json` given with `--image-metadata`: a JSON object.
fn read_metadata(path: &Path) -> Result<serde_json::Value, Error> {
    let v = read_json_file(path, "image metadata")?;
    if !v.is_object() {
        return Err(
            Error::invalid_argument("the image metadata is not a JSON object").with_path(path),
        );
    }
    Ok(v)
}

/// `imgconv export --api ...`: the provider's response on stdout (its HTTP status and headers
/// on stderr), then, for a new job, the job run to its end. Exit 0 when the answer is a
/// success and the job (if run) completed; 1 when the API answered an error; 6 when the job
/// failed; 130 when it was cancelled. `--work` runs queued jobs instead (see [`work`]).
pub(crate) fn export_api(a: ApiArgs) -> CmdResult {
    use imgconv_export::jobs::{JobState, JobStore, DEFAULT_ACCOUNT};
    use imgconv_server::providers::{Cli, Context, Provider};
    let api: Cli = a.api.parse()?;
    let mut store = JobStore::open(&a.db)?;
    if a.work {
        return work(api, &mut store);
    }
    let reply = if let Some(id) = &a.describe {
        api.describe(&mut store, DEFAULT_ACCOUNT, id)
    } else if let Some(id) = &a.cancel {
        api.cancel(&std::cell::RefCell::new(&mut store), DEFAULT_ACCOUNT, id)
    } else if a.list {
        api.list(&mut store, DEFAULT_ACCOUNT)
    } else if let Some(id) = &a.run {
        let cancel = CancelToken::new();
        install_signal_handler(&cancel);
        let job = store.run(id, None, &cancel)?;
        api.describe(&mut store, &job.account, &job.id)
    } else {
        let Some(path) = &a.request else {
            return Err(Error::invalid_argument(
                "give --request FILE.json (with --image), --describe, --cancel, --run or --list",
            )
            .into());
        };
        let Some(image) = &a.image else {
            return Err(Error::invalid_argument("--request needs --image PATH").into());
        };
        let request = read_request_file(path)?;
        let mut headers = std::collections::BTreeMap::new();
        for h in &a.header {
            let (k, v) = h.split_once(':').ok_or_else(|| {
                Error::invalid_argument(format!("--header '{h}' is not NAME:VALUE"))
            })?;
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
        let region = resolve_region(a.region.as_deref());
        let bucket = match &a.bucket {
            Some(b) => {
                let rest = b.strip_prefix("s3://").ok_or_else(|| {
                    Error::invalid_argument("--bucket must be s3://BUCKET/PREFIX")
                })?;
                let (name, prefix) = rest.split_once('/').unwrap_or((rest, ""));
                Some((name.to_string(), prefix.to_string()))
            }
            None => None,
        };
        let oci_metadata = match &a.image_metadata {
            Some(_) if api.provider() != Provider::Oci => {
                return Err(Error::invalid_argument(
                    "--image-metadata is for --api oci (its OCI export format)",
                )
                .into())
            }
            Some(path) => Some(read_metadata(path)?),
            None => None,
        };
        let ctx = Context {
            source: image.clone(),
            endpoint: resolve_endpoint(a.endpoint.as_deref()).map(|e| (e, region)),
            bucket,
            publish: a.publish_dir.clone().zip(a.publish_url.clone()),
            in_use: a.in_use,
            oci_metadata,
            ..Context::default()
        };
        api.submit(
            &std::cell::RefCell::new(&mut store),
            &ctx,
            &request,
            &headers,
            a.image_id.as_deref(),
        )
    };
    eprintln!("status: {}", reply.status);
    for (k, v) in &reply.headers {
        eprintln!("{k}: {v}");
    }
    println!(
        "{}",
        serde_json::to_string_pretty(&reply.body).unwrap_or_default()
    );
    use std::io::Write as _;
    let _ = std::io::stdout().flush();
    if reply.status >= 300 {
        return Ok(1);
    }
    let (Some(id), false) = (&reply.run, a.no_run) else {
        return Ok(0);
    };
    // Ctrl-C cancels the job: the upload is aborted, the job recorded as cancelled.
    let cancel = CancelToken::new();
    install_signal_handler(&cancel);
    let job = store.run(id, None, &cancel)?;
    Ok(match job.state {
        JobState::Completed => 0,
        JobState::Cancelled => 130,
        _ => {
            eprintln!("imgconv: export job {} failed: {}", job.id, job.message);
            6
        }
    })
}

/// `imgconv images --config FILE add|list|remove`: the service's image catalogue.
pub(crate) fn images(a: crate::args::ImagesArgs) -> CmdResult {
    use crate::args::{ImagesAction, OutputMode};
    let config = imgconv_server::Config::load(&a.config)?;
    let store = imgconv_server::open_store(&config)?;
    match a.action {
        ImagesAction::Add {
            id,
            path,
            owner,
            share,
        } => {
            if id.is_empty() || id.len() > 256 || id.chars().any(char::is_control) {
                return Err(Error::invalid_argument(
                    "an image id is 1 to 256 printable characters",
                )
                .into());
            }
            // The file the id stands for, as an absolute path: the service runs elsewhere.
            let path = std::fs::canonicalize(&path)
                .map_err(|e| Error::io("cannot find the image file", e).with_path(&path))?;
            if !path.is_file() {
                return Err(
                    Error::new(imgconv::ErrorKind::NotAFile, "the image is not a file")
                        .with_path(&path)
                        .into(),
                );
            }
            store.put_image(&imgconv_export::jobs::CatalogueImage {
                id,
                path,
                owner: owner.filter(|o| !o.is_empty()),
                shared_with: share,
            })?;
            Ok(0)
        }
        ImagesAction::List { output } => {
            let images = store.catalogue()?;
            if output == OutputMode::Json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&images).unwrap_or_default()
                );
            } else {
                for i in &images {
                    println!(
                        "{}\t{}\t{}\t{}",
                        i.id,
                        i.owner.as_deref().unwrap_or("(public)"),
                        i.shared_with.join(","),
                        i.path.display()
                    );
                }
            }
            Ok(0)
        }
        ImagesAction::Remove { id } => {
            if store.remove_image(&id)? {
                Ok(0)
            } else {
                Err(Error::new(
                    imgconv::ErrorKind::NotFound,
                    format!("no image '{id}' in the catalogue"),
                )
                .into())
            }
        }
    }
}

/// `imgconv export --api API --work`: run the API's queued jobs until none is left. Exit 0
/// when the queue is empty (jobs that failed are recorded as failed), 130 on Ctrl-C, which
/// cancels the running job and leaves the rest queued.
fn work(
    api: imgconv_server::providers::Cli,
    store: &mut imgconv_export::jobs::JobStore,
) -> CmdResult {
    use std::io::Write as _;
    let cancel = CancelToken::new();
    install_signal_handler(&cancel);
    while let Some(job) = store.run_next(api.kind(), None, &cancel)? {
        let reply = api.describe(store, &job.account, &job.id);
        println!("{}", serde_json::to_string(&reply.body).unwrap_or_default());
        let _ = std::io::stdout().flush();
        eprintln!("imgconv: export job {}: {}", job.id, job.message);
        if cancel.is_cancelled() {
            return Ok(130);
        }
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::human_size;

    #[test]
    fn sizes_print_like_qemu_img() {
        assert_eq!(human_size(0), "0 B");
        assert_eq!(human_size(512), "512 B");
        assert_eq!(human_size(4096), "4 KiB");
        assert_eq!(human_size(2 << 30), "2 GiB");
        assert_eq!(human_size(1536 << 20), "1.5 GiB");
        assert_eq!(human_size(123 << 20), "123 MiB");
    }
}
