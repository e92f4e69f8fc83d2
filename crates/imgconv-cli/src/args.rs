//! Command-line arguments, as clap parses them, and their validation into configurations.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Convert, inspect, check, map, compare and measure virtual-disk images.
///
/// `imgconv IN OUT` converts IN to OUT, choosing the output format from OUT's extension; it is
/// short for `imgconv convert IN OUT`.
#[derive(Debug, Parser)]
#[command(
    name = "imgconv",
    version,
    about,
    after_help = "Exit codes: 0 success (compare: identical; check: clean), 1 compare: images \
                  differ (check: could not check), 2 usage error or invalid argument (compare: any \
                  error; check: corruptions), 3 input or bucket not found (check: leaks only), \
                  4 input is not a file, 5 output or object exists (use --force), 6 I/O error, \
                  7 no space left or file too large, 8 invalid or corrupt image, \
                  9 unsupported format or feature, 10 limit exceeded, \
                  11 object storage refused the credentials or access, \
                  12 internal error (a bug; please report it), 130 interrupted."
)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Convert an image to another format (or the same one), with inline digests.
    Convert(ConvertArgs),
    /// Show an image's format, sizes and format-specific facts.
    Info(InfoArgs),
    /// Compare the content of two images (exit 0 identical, 1 different, 2 error).
    Compare(CompareArgs),
    /// Print the size an output format would need for an image.
    Measure(MeasureArgs),
    /// Check an image's structures (tables in bounds, no overlaps, refcounts, redundant
    /// copies): exit 0 clean, 2 corruptions, 3 leaks only, 1 the check could not be done.
    Check(CheckArgs),
    /// Show where an image's data is: allocated, zero and unallocated ranges, and where each
    /// is stored in the file (qemu-img map's fields).
    Map(MapArgs),
    /// Serve a cloud "export image" request: print the provider's response, then run the job.
    #[command(
        after_help = "Exit codes: 0 the answer is a success and the job (if run) \
                            completed, 1 the API answered an error (its body is on stdout), \
                            6 the job failed, 130 the job was cancelled; 2, 3, 6 and 11 as for \
                            convert when imgconv itself cannot proceed."
    )]
    Export(ApiArgs),
    /// Run the export service: the AWS, OCI, Huawei IMS/EVS and ZStack export APIs over HTTP.
    #[command(
        after_help = "The configuration file (TOML) names the address, the job store, the \
                      object storage, the images and the callers' keys: see the README's \
                      \"Run the export service\". SIGTERM or SIGINT stops accepting, puts the \
                      running exports back in the queue and exits 0. SIGHUP reads the file \
                      again (callers, accounts, storage, images) without dropping a request or \
                      an export. Exit codes: 2 a bad \
                      configuration, 3 no configuration file, 6 the address or job store \
                      cannot be used."
    )]
    Serve(ServeArgs),
    /// The export service's image catalogue, in its job store: every instance of a fleet sees
    /// a change at once, with no restart.
    #[command(
        after_help = "Exit codes: 0 done, 2 a bad configuration or argument, 3 no                       configuration file, no such image file or (remove) no such id, 6 the job                       store cannot be used."
    )]
    Images(ImagesArgs),
}

/// `imgconv images`.
#[derive(Debug, Args)]
pub(crate) struct ImagesArgs {
    /// The service's configuration file (its job store is the catalogue's).
    #[arg(long, value_name = "FILE")]
    pub(crate) config: PathBuf,
    #[command(subcommand)]
    pub(crate) action: ImagesAction,
}

/// What `imgconv images` does.
#[derive(Debug, Subcommand)]
pub(crate) enum ImagesAction {
    /// Add an image (or replace the one of that id): the id the APIs name, and its disk file.
    Add {
        /// The image id (an AMI id, an OCI image OCID, an IMS image id, a ZStack image UUID).
        id: String,
        /// The disk file (any format imgconv reads).
        path: PathBuf,
        /// The account that owns it; without one, every account may export it.
        #[arg(long, value_name = "ACCOUNT")]
        owner: Option<String>,
        /// Another account that may export it (repeat for more).
        #[arg(long = "share", value_name = "ACCOUNT")]
        share: Vec<String>,
    },
    /// List the images.
    List {
        /// `human` (a line each) or `json`.
        #[arg(long, value_enum, default_value_t = OutputMode::Human)]
        output: OutputMode,
    },
    /// Remove an image: exports of it are refused as for an id that never existed.
    Remove {
        /// The image id.
        id: String,
    },
}

/// `imgconv serve`.
#[derive(Debug, Args)]
pub(crate) struct ServeArgs {
    /// The configuration file.
    #[arg(long, value_name = "FILE")]
    pub(crate) config: PathBuf,
}

/// `imgconv export --api ...`.
#[derive(Debug, Args)]
pub(crate) struct ApiArgs {
    /// The API whose request and response shapes to speak: aws, oci, huawei-ims, huawei-evs,
    /// zstack.
    #[arg(long, value_name = "API")]
    pub(crate) api: String,
    /// The job database, kept across runs: an SQLite file, or a PostgreSQL URL
    /// (postgres://USER:PASSWORD@HOST:PORT/DBNAME) shared with other hosts.
    #[arg(
        long,
        value_name = "FILE|URL",
        env = "IMGCONV_JOBS_DB",
        default_value = "imgconv-jobs.sqlite"
    )]
    pub(crate) db: PathBuf,
    /// The request body (JSON) to submit.
    #[arg(long, value_name = "FILE.json", conflicts_with_all = ["describe", "cancel", "list"])]
    pub(crate) request: Option<PathBuf>,
    /// The disk image the request's image (or volume) id stands for.
    #[arg(long, value_name = "PATH", requires = "request")]
    pub(crate) image: Option<PathBuf>,
    /// The id in the request's path (OCI and IMS image id, EVS volume id).
    #[arg(long, value_name = "ID")]
    pub(crate) image_id: Option<String>,
    /// A request header, NAME:VALUE (OCI's opc-retry-token, if-match); repeatable.
    #[arg(long, value_name = "NAME:VALUE")]
    pub(crate) header: Vec<String>,
    /// S3-compatible endpoint for bucket destinations (default: $AWS_ENDPOINT_URL_S3,
    /// $AWS_ENDPOINT_URL, the profile's endpoint_url in ~/.aws/config).
    #[arg(long, value_name = "URL")]
    pub(crate) endpoint: Option<String>,
    /// Signing region (default: $AWS_REGION, $AWS_DEFAULT_REGION, the profile's region in
    /// ~/.aws/config, or us-east-1).
    #[arg(long, value_name = "REGION")]
    pub(crate) region: Option<String>,
    /// Where EVS images go: s3://BUCKET/PREFIX.
    #[arg(long, value_name = "URL")]
    pub(crate) bucket: Option<String>,
    /// ZStack backup storage: the folder a web server publishes...
    #[arg(long, value_name = "DIR", requires = "publish_url")]
    pub(crate) publish_dir: Option<PathBuf>,
    /// ...and the URL it is served at.
    #[arg(long, value_name = "URL", requires = "publish_dir")]
    pub(crate) publish_url: Option<String>,
    /// EVS: the volume is attached to a server (the request then needs force).
    #[arg(long)]
    pub(crate) in_use: bool,
    /// OCI's own format: the image's image_metadata.json (launch options, operating system)
    /// to put in the archive (default: BIOS firmware, paravirtualized, "Custom" OS).
    #[arg(long, value_name = "FILE")]
    pub(crate) image_metadata: Option<PathBuf>,
    /// Answer the request but leave the job queued (run it later with --run).
    #[arg(long)]
    pub(crate) no_run: bool,
    /// Run a queued job.
    #[arg(long, value_name = "JOB")]
    pub(crate) run: Option<String>,
    /// Worker: run the API's queued jobs (submitted with --no-run), oldest first, one after
    /// another, until none is left; each job's description goes to stdout as a JSON line.
    /// Workers on one database never run the same job twice.
    #[arg(long, conflicts_with_all = ["run", "describe", "cancel", "list", "request"])]
    pub(crate) work: bool,
    /// Describe a job.
    #[arg(long, value_name = "JOB")]
    pub(crate) describe: Option<String>,
    /// Cancel a job.
    #[arg(long, value_name = "JOB")]
    pub(crate) cancel: Option<String>,
    /// List the API's jobs.
    #[arg(long)]
    pub(crate) list: bool,
}

/// Names of the subcommands, for telling the short form `imgconv IN OUT` apart.
pub(crate) const SUBCOMMANDS: &[&str] = &[
    "convert", "info", "compare", "measure", "map", "check", "export", "serve", "images", "help",
];

/// How results are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub(crate) enum OutputMode {
    /// Lines for people.
    #[default]
    Human,
    /// One JSON document on stdout.
    Json,
}

/// How progress is reported on stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub(crate) enum ProgressMode {
    /// Nothing.
    #[default]
    None,
    /// A progress bar, when stderr is a terminal.
    Bar,
    /// JSON lines: bytes done, total, percent and rate.
    Json,
}

/// Options every subcommand that does heavy work takes.
#[derive(Debug, Args)]
pub(crate) struct Common {
    /// Worker threads (default: one per core; one fewer when neither the input nor the output
    /// is compressed, as the thread writing the output then needs a core of its own).
    #[arg(long, value_name = "N")]
    pub(crate) threads: Option<usize>,
}

/// `imgconv convert`.
#[derive(Debug, Args)]
pub(crate) struct ConvertArgs {
    /// Input format: raw, qcow2, vmdk, vhd (or vpc), vdi, vhdx, ova, gce (default: detected
    /// from magic bytes).
    #[arg(short = 'f', value_name = "FMT")]
    pub(crate) input_format: Option<String>,
    /// Output format: raw, qcow2, vmdk, vhd (or vpc), vdi, vhdx, ova, gce (default: from the
    /// output's extension; `.tar.gz` is gce).
    #[arg(short = 'O', value_name = "FMT")]
    pub(crate) output_format: Option<String>,
    /// Output options, key=value[,key=value...] (repeatable). RAW: preallocation=off|falloc|full.
    /// QCOW2: compat=0.10|1.1, cluster_size=512..2M, compression_type=zlib|zstd.
    /// VMDK: subformat=streamOptimized, adapter_type=lsilogic|ide|buslogic|legacyESX|pvscsi,
    /// hwversion=N, compression_level=1..12. VHD: subformat=dynamic|fixed, block_size=4K..16M,
    /// azure=on (fixed, size rounded up to a whole MiB). VDI: subformat=dynamic|fixed.
    /// VHDX: subformat=dynamic|fixed, block_size=1M..256M, logical_sector_size=512|4096,
    /// physical_sector_size=512|4096. OVA: name=NAME, cpus=N, memory=MIB and the VMDK's
    /// adapter_type, hwversion, compression_level. GCE: round_to_gib=on|off,
    /// compression_level=1..12.
    #[arg(short = 'o', value_name = "OPTIONS")]
    pub(crate) options: Vec<String>,
    /// In a package holding several disks (an OVA), convert disk N (from 1, in the OVF's
    /// order).
    #[arg(long = "disk", value_name = "N", default_value_t = 1)]
    pub(crate) disk: usize,
    /// Compress the output (QCOW2: zlib, or zstd with -o compression_type=zstd).
    #[arg(short = 'c')]
    pub(crate) compress: bool,
    /// Show a progress bar (same as --progress=bar).
    #[arg(short = 'p')]
    pub(crate) progress_bar: bool,
    /// Progress on stderr: none, bar (when a terminal) or json (JSON lines for services).
    #[arg(long, value_enum, value_name = "MODE")]
    pub(crate) progress: Option<ProgressMode>,
    /// Digests of the output to compute inline: md5, sha256, crc32c (comma-separated).
    #[arg(long, value_name = "LIST")]
    pub(crate) digest: Option<String>,
    /// Replace the output if it exists.
    #[arg(long)]
    pub(crate) force: bool,
    /// Do not fsync the output before publishing it (faster; not crash-safe).
    #[arg(long)]
    pub(crate) no_sync: bool,
    /// Reproducible output: every id and date the output holds (VMDK CID and content ids, VHD
    /// unique id and timestamp, VDI uuids) comes from the input's content, the options and
    /// $SOURCE_DATE_EPOCH (0 when unset), so the same input and options give the same bytes.
    /// On whenever SOURCE_DATE_EPOCH is set. Costs one more read of the input for VMDK, VHD
    /// and VDI outputs.
    #[arg(long)]
    pub(crate) deterministic: bool,
    /// Bytes of the disk each pipeline chunk holds (default 4M); the output does not depend
    /// on it.
    #[arg(long, value_name = "SIZE")]
    pub(crate) chunk_size: Option<String>,
    /// How to print the result (digests, sizes).
    #[arg(long, value_enum, default_value_t = OutputMode::Human, value_name = "MODE")]
    pub(crate) output: OutputMode,
    #[command(flatten)]
    pub(crate) common: Common,
    #[command(flatten)]
    pub(crate) export: ExportArgs,
    /// The image to read.
    pub(crate) input: PathBuf,
    /// Where to write: a file; - for stdout (then -O is needed); s3://BUCKET/KEY (also obs://,
    /// oci://) for an S3-compatible bucket; an OCI pre-authenticated request URL
    /// (https://.../p/TOKEN/n/NS/b/BUCKET/o/OBJECT).
    #[arg(value_name = "OUTPUT")]
    pub(crate) output_path: PathBuf,
}

/// Options of exports to object storage or to a published folder.
#[derive(Debug, Args)]
#[command(next_help_heading = "Export to object storage")]
pub(crate) struct ExportArgs {
    /// S3-compatible endpoint for s3://, obs:// and oci:// outputs (default:
    /// $AWS_ENDPOINT_URL_S3, $AWS_ENDPOINT_URL, the profile's endpoint_url in ~/.aws/config,
    /// and for s3:// `https://s3.REGION.amazonaws.com`).
    #[arg(long, value_name = "URL")]
    pub(crate) endpoint: Option<String>,
    /// Region that requests are signed for (default: $AWS_REGION, $AWS_DEFAULT_REGION, the
    /// profile's region in ~/.aws/config, or us-east-1).
    #[arg(long, value_name = "REGION")]
    pub(crate) region: Option<String>,
    /// Address buckets as BUCKET.endpoint instead of endpoint/BUCKET.
    #[arg(long)]
    pub(crate) virtual_hosted: bool,
    /// Part size of multipart uploads, e.g. 64M (default: the smallest whole MiB, at least
    /// 5 MiB, with which 10,000 parts cover the image).
    #[arg(long, value_name = "SIZE")]
    pub(crate) part_size: Option<String>,
    /// Parts uploaded at once (memory is about part size x (this + 1)); default 4.
    #[arg(long, value_name = "N")]
    pub(crate) parallel_parts: Option<usize>,
    /// Retries of each request (5xx, timeouts, dropped connections); default 5.
    #[arg(long, value_name = "N")]
    pub(crate) retries: Option<u32>,
    /// Do not send x-amz-checksum-crc32c with each part (for services that reject it).
    #[arg(long)]
    pub(crate) no_crc32c: bool,
    /// Publish a file output under this base URL: prints the image URL, and writes NAME.md5
    /// next to the file.
    #[arg(long, value_name = "URL")]
    pub(crate) publish_url: Option<String>,
    /// Folder for the scratch file of a compressed QCOW2 export (default: $TMPDIR).
    #[arg(long, value_name = "DIR")]
    pub(crate) scratch_dir: Option<PathBuf>,
    /// Also trust the CAs in this PEM file (an endpoint behind a private CA); the bundled
    /// Mozilla roots and the system's (including $SSL_CERT_FILE) are always trusted.
    #[arg(long, value_name = "FILE")]
    pub(crate) ca_bundle: Option<PathBuf>,
}

impl ExportArgs {
    /// Whether any option that only applies to an upload was given.
    pub(crate) fn upload_options_given(&self) -> bool {
        self.endpoint.is_some()
            || self.region.is_some()
            || self.virtual_hosted
            || self.part_size.is_some()
            || self.parallel_parts.is_some()
            || self.retries.is_some()
            || self.no_crc32c
            || self.scratch_dir.is_some()
            || self.ca_bundle.is_some()
    }
}

/// `imgconv info`.
#[derive(Debug, Args)]
pub(crate) struct InfoArgs {
    /// Image format (default: detected from magic bytes).
    #[arg(short = 'f', value_name = "FMT")]
    pub(crate) format: Option<String>,
    /// How to print.
    #[arg(long, value_enum, default_value_t = OutputMode::Human, value_name = "MODE")]
    pub(crate) output: OutputMode,
    /// The image.
    pub(crate) image: PathBuf,
}

/// `imgconv compare`.
#[derive(Debug, Args)]
pub(crate) struct CompareArgs {
    /// Format of the first image (default: detected).
    #[arg(short = 'f', value_name = "FMT")]
    pub(crate) format_a: Option<String>,
    /// Format of the second image (default: detected).
    #[arg(short = 'F', value_name = "FMT")]
    pub(crate) format_b: Option<String>,
    /// Strict: images of different sizes are different.
    #[arg(short = 's', long)]
    pub(crate) strict: bool,
    /// Print nothing; the exit code tells.
    #[arg(short = 'q', long)]
    pub(crate) quiet: bool,
    #[command(flatten)]
    pub(crate) common: Common,
    /// The first image.
    pub(crate) a: PathBuf,
    /// The second image.
    pub(crate) b: PathBuf,
}

/// `imgconv check`.
#[derive(Debug, Args)]
pub(crate) struct CheckArgs {
    /// Image format (default: detected from magic bytes).
    #[arg(short = 'f', value_name = "FMT")]
    pub(crate) format: Option<String>,
    /// How to print: human (qemu-img check's lines) or json (its fields, plus `findings`).
    #[arg(long, value_enum, default_value_t = OutputMode::Human, value_name = "MODE")]
    pub(crate) output: OutputMode,
    /// Print nothing; the exit code tells.
    #[arg(short = 'q', long)]
    pub(crate) quiet: bool,
    /// The image.
    pub(crate) image: PathBuf,
}

/// `imgconv map`.
#[derive(Debug, Args)]
pub(crate) struct MapArgs {
    /// Image format (default: detected from magic bytes).
    #[arg(short = 'f', value_name = "FMT")]
    pub(crate) format: Option<String>,
    /// How to print: human (the stored data ranges and where they are in the file) or json
    /// (every range: start, length, depth, present, zero, data, compressed, offset).
    #[arg(long, value_enum, default_value_t = OutputMode::Human, value_name = "MODE")]
    pub(crate) output: OutputMode,
    /// The image.
    pub(crate) image: PathBuf,
}

/// `imgconv measure`.
#[derive(Debug, Args)]
pub(crate) struct MeasureArgs {
    /// Input format (default: detected).
    #[arg(short = 'f', value_name = "FMT")]
    pub(crate) input_format: Option<String>,
    /// The output format to measure for: raw, qcow2, vmdk, vhd (or vpc), vdi, vhdx, ova, gce.
    #[arg(short = 'O', value_name = "FMT")]
    pub(crate) output_format: String,
    /// Output options, as for convert (repeatable).
    #[arg(short = 'o', value_name = "OPTIONS")]
    pub(crate) options: Vec<String>,
    /// Measure a compressed output (as convert -c): `required` is then an upper bound.
    #[arg(short = 'c')]
    pub(crate) compress: bool,
    /// How to print.
    #[arg(long, value_enum, default_value_t = OutputMode::Human, value_name = "MODE")]
    pub(crate) output: OutputMode,
    #[command(flatten)]
    pub(crate) common: Common,
    /// The image.
    pub(crate) input: PathBuf,
}

/// Insert `convert` when the first argument is not a subcommand or a top-level flag, so that
/// `imgconv IN OUT` and `imgconv -p IN OUT` mean `imgconv convert ...`.
pub(crate) fn with_default_subcommand(
    mut args: Vec<std::ffi::OsString>,
) -> Vec<std::ffi::OsString> {
    let first = args.get(1).and_then(|a| a.to_str()).unwrap_or("");
    let top_level = ["-h", "--help", "-V", "--version"];
    if args.len() > 1 && !SUBCOMMANDS.contains(&first) && !top_level.contains(&first) {
        args.insert(1, "convert".into());
    }
    args
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(v: &[&str]) -> Vec<std::ffi::OsString> {
        v.iter().map(|s| s.into()).collect()
    }

    #[test]
    fn the_short_form_becomes_convert() {
        assert_eq!(
            with_default_subcommand(os(&["imgconv", "a.raw", "b.raw"])),
            os(&["imgconv", "convert", "a.raw", "b.raw"])
        );
        assert_eq!(
            with_default_subcommand(os(&["imgconv", "-p", "a", "b"])),
            os(&["imgconv", "convert", "-p", "a", "b"])
        );
    }

    #[test]
    fn subcommands_and_top_level_flags_are_kept() {
        for v in [
            &["imgconv", "info", "x"][..],
            &["imgconv", "--help"],
            &["imgconv", "-V"],
            &["imgconv"],
        ] {
            assert_eq!(with_default_subcommand(os(v)), os(v));
        }
    }

    #[test]
    fn clap_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
