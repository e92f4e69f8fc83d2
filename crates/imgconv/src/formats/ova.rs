//! OVA: an OVF package in one tar, as VMware's ovftool and VirtualBox write it.
//!
//! Writer: a POSIX ustar archive of, in this order, the OVF descriptor `NAME.ovf` (OVF 1.0:
//! References with the disk file's size, a DiskSection with `ovf:capacity` and
//! `ovf:populatedSize` and the streamOptimized format URI, a VirtualSystem with a minimal
//! hardware section: CPUs, memory, a SCSI controller and the disk), the manifest `NAME.mf`
//! (`SHA256(member)= hex` for the OVF and the disk) and the disk `NAME-disk1.vmdk`
//! (streamOptimized). Written in one pass in every case, although the disk's size and SHA-256,
//! which the first members hold, are known only once the disk is written:
//! - to a file (or any seekable output): the OVF and the manifest are written with room
//!   reserved (the OVF is padded with trailing white space to the length its largest values
//!   would give; the manifest's length does not depend on the values), and patched at the end
//!   with the disk's tar header; the disk's SHA-256 comes from reading it back once;
//! - to a stream (stdout, object storage): a rehearsal first writes the disk into nothing to
//!   learn its size and SHA-256 (the same ids are used in both runs, so the bytes are the
//!   same), then the package is written in order. This costs the compression twice, and no
//!   scratch space.
//!
//! Reader: the OVF (the first `.ovf` member) names the disks (DiskSection, in order) and their
//! files (References); the first disk (or `--disk N`) is read straight out of the tar, in
//! whatever format it is (streamOptimized VMDK usually); the manifest's SHA-256 or SHA-1
//! digests of every member it lists are verified at open. Refused: compressed (`gzip`) or
//! chunked file references, disks whose file is not in the archive, a digest that differs.

use std::sync::Arc;

use quick_xml::events::Event;
use sha2::Digest as _;

use crate::buffer::Bytes;
use crate::error::{Error, ErrorKind, Result};
use crate::formats::options::WriterOptions;
use crate::formats::package::{MemberSource, Packaged};
use crate::formats::tar::{self, Flavor, Member};
use crate::formats::vmdk::{StreamWriter, VmdkOptions};
use crate::model::{Format, Plan};
use crate::reader::Reader;
use crate::sink::Output;
use crate::source::Source;
use crate::writer::{Measure, Writer, WriterSummary};

fn bad(at: u64, msg: impl Into<String>) -> Error {
    Error::invalid_image(Format::Ova, at, msg)
}

/// The streamOptimized format URI of OVF's DiskSection.
const STREAM_URI: &str =
    "http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized";

/// Options of the OVA writer: the VM's name and hardware, and the VMDK's options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct OvaOptions {
    /// The virtual system's name (also the members' stem).
    pub name: String,
    /// Virtual CPUs.
    pub cpus: u32,
    /// Memory in MiB.
    pub memory_mib: u64,
    /// The disk's options (streamOptimized).
    pub vmdk: VmdkOptions,
}

impl OvaOptions {
    /// Take OVA's options; `stem` (the output file's name without `.ova`) is the default name.
    pub(crate) fn parse(mut opts: WriterOptions, stem: &str) -> Result<OvaOptions> {
        let name = opts.take("name").unwrap_or_else(|| stem.to_string());
        if name.is_empty()
            || name.len() > 64
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            || name.starts_with('.')
        {
            return Err(Error::invalid_argument(format!(
                "the OVA name '{name}' must be 1 to 64 letters, digits, '-', '_' or '.' (set it \
                 with -o name=...)"
            )));
        }
        let cpus = match opts.take("cpus") {
            None => 1,
            Some(c) => c
                .parse::<u32>()
                .ok()
                .filter(|c| (1..=1024).contains(c))
                .ok_or_else(|| Error::invalid_argument(format!("cpus '{c}' is not 1 to 1024")))?,
        };
        let memory_mib = match opts.take("memory") {
            None => 1024,
            Some(m) => m
                .parse::<u64>()
                .ok()
                .filter(|m| (4..=(16 << 20)).contains(m))
                .ok_or_else(|| {
                    Error::invalid_argument(format!("memory '{m}' is not 4 to 16777216 (MiB)"))
                })?,
        };
        if let Some(s) = opts.take("subformat") {
            if !s.eq_ignore_ascii_case("streamOptimized") {
                return Err(Error::invalid_argument(
                    "an OVA holds its disk as a streamOptimized VMDK (subformat takes no other \
                     value)",
                ));
            }
        }
        let mut vmdk_opts = WriterOptions::new();
        for key in ["adapter_type", "hwversion", "compression_level"] {
            if let Some(v) = opts.take(key) {
                vmdk_opts.extend(&format!("{key}={}", v.replace(',', ",,")))?;
            }
        }
        opts.finish(
            Format::Ova,
            &[
                "name",
                "cpus",
                "memory",
                "adapter_type",
                "hwversion",
                "compression_level",
                "subformat",
            ],
        )?;
        let (_, vmdk) = VmdkOptions::parse(vmdk_opts, &format!("{name}-disk1.vmdk"))?;
        Ok(OvaOptions {
            name,
            cpus,
            memory_mib,
            vmdk,
        })
    }

    fn ovf_name(&self) -> String {
        format!("{}.ovf", self.name)
    }

    fn mf_name(&self) -> String {
        format!("{}.mf", self.name)
    }

    fn disk_name(&self) -> String {
        format!("{}-disk1.vmdk", self.name)
    }
}

/// What a rehearsal learned of the disk file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct KnownDisk {
    /// The VMDK's length.
    pub len: u64,
    /// Its SHA-256.
    pub sha256: [u8; 32],
    /// Bytes of the disk holding data (grains written times the grain size).
    pub populated: u64,
}

/// The OVF descriptor.
fn ovf(o: &OvaOptions, capacity: u64, file_size: u64, populated: u64) -> String {
    let name = &o.name;
    let disk = o.disk_name();
    let (cpus, mem) = (o.cpus, o.memory_mib);
    let controller = match o.vmdk.adapter_type.as_str() {
        "ide" => "        <rasd:Address>0</rasd:Address>\n        <rasd:ElementName>IDE Controller 0</rasd:ElementName>\n        <rasd:InstanceID>3</rasd:InstanceID>\n        <rasd:ResourceType>5</rasd:ResourceType>\n".to_string(),
        other => {
            let sub = match other {
                "buslogic" => "buslogic",
                "pvscsi" => "VirtualSCSI",
                _ => "lsilogic",
            };
            format!("        <rasd:Address>0</rasd:Address>\n        <rasd:ElementName>SCSI Controller 0</rasd:ElementName>\n        <rasd:InstanceID>3</rasd:InstanceID>\n        <rasd:ResourceSubType>{sub}</rasd:ResourceSubType>\n        <rasd:ResourceType>6</rasd:ResourceType>\n")
        }
    };
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1" xmlns:cim="http://schemas.dmtf.org/wbem/wscim/1/common" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1" xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData" xmlns:vssd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
  <References>
    <File ovf:href="{disk}" ovf:id="file1" ovf:size="{file_size}"/>
  </References>
  <DiskSection>
    <Info>Virtual disk information</Info>
    <Disk ovf:capacity="{capacity}" ovf:capacityAllocationUnits="byte" ovf:diskId="vmdisk1" ovf:fileRef="file1" ovf:format="{STREAM_URI}" ovf:populatedSize="{populated}"/>
  </DiskSection>
  <VirtualSystem ovf:id="{name}">
    <Info>A virtual machine</Info>
    <Name>{name}</Name>
    <OperatingSystemSection ovf:id="1">
      <Info>The kind of installed guest operating system</Info>
      <Description>Other</Description>
    </OperatingSystemSection>
    <VirtualHardwareSection>
      <Info>Virtual hardware requirements</Info>
      <System>
        <vssd:ElementName>Virtual Hardware Family</vssd:ElementName>
        <vssd:InstanceID>0</vssd:InstanceID>
        <vssd:VirtualSystemIdentifier>{name}</vssd:VirtualSystemIdentifier>
        <vssd:VirtualSystemType>vmx-10</vssd:VirtualSystemType>
      </System>
      <Item>
        <rasd:AllocationUnits>hertz * 10^6</rasd:AllocationUnits>
        <rasd:Description>Number of Virtual CPUs</rasd:Description>
        <rasd:ElementName>{cpus} virtual CPU(s)</rasd:ElementName>
        <rasd:InstanceID>1</rasd:InstanceID>
        <rasd:ResourceType>3</rasd:ResourceType>
        <rasd:VirtualQuantity>{cpus}</rasd:VirtualQuantity>
      </Item>
      <Item>
        <rasd:AllocationUnits>byte * 2^20</rasd:AllocationUnits>
        <rasd:Description>Memory Size</rasd:Description>
        <rasd:ElementName>{mem}MB of memory</rasd:ElementName>
        <rasd:InstanceID>2</rasd:InstanceID>
        <rasd:ResourceType>4</rasd:ResourceType>
        <rasd:VirtualQuantity>{mem}</rasd:VirtualQuantity>
      </Item>
      <Item>
{controller}      </Item>
      <Item>
        <rasd:AddressOnParent>0</rasd:AddressOnParent>
        <rasd:ElementName>Hard Disk 1</rasd:ElementName>
        <rasd:HostResource>ovf:/disk/vmdisk1</rasd:HostResource>
        <rasd:InstanceID>4</rasd:InstanceID>
        <rasd:Parent>3</rasd:Parent>
        <rasd:ResourceType>17</rasd:ResourceType>
      </Item>
    </VirtualHardwareSection>
  </VirtualSystem>
</Envelope>
"#
    )
}

/// The manifest.
fn manifest(o: &OvaOptions, ovf_sha: &[u8; 32], disk_sha: &[u8; 32]) -> String {
    format!(
        "SHA256({})= {}\nSHA256({})= {}\n",
        o.ovf_name(),
        hex::encode(ovf_sha),
        o.disk_name(),
        hex::encode(disk_sha)
    )
}

/// The OVA writer: the VMDK writer inside a tar that begins with the OVF and the manifest.
#[derive(Debug)]
pub(crate) struct OvaWriter {
    head: Head,
    vmdk: StreamWriter,
    known: Option<KnownDisk>,
    /// Where the disk's tar header and data start.
    disk_header_at: u64,
}

/// What the members before the disk's data are made from.
#[derive(Debug)]
struct Head {
    opts: OvaOptions,
    capacity: u64,
    mtime: u64,
    /// The OVF member's length (the descriptor plus its padding).
    ovf_len: usize,
}

impl OvaWriter {
    /// A writer for a disk of `size` bytes; `known` when a rehearsal measured the disk file.
    pub(crate) fn new(size: u64, opts: OvaOptions, known: Option<KnownDisk>) -> Result<OvaWriter> {
        let vmdk = StreamWriter::new(size, opts.vmdk.clone())?;
        let capacity = size.div_ceil(512) * 512;
        let widest = ovf(&opts, u64::MAX, u64::MAX, u64::MAX).len();
        Ok(OvaWriter {
            head: Head {
                opts,
                capacity,
                mtime: std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs()),
                ovf_len: widest,
            },
            vmdk,
            known,
            disk_header_at: 0,
        })
    }
}

impl Head {
    /// The OVF member's bytes, padded to its reserved length.
    fn ovf_bytes(&self, file_size: u64, populated: u64) -> Vec<u8> {
        let mut b = ovf(&self.opts, self.capacity, file_size, populated).into_bytes();
        b.resize(self.ovf_len, b' ');
        if let Some(last) = b.last_mut() {
            *last = b'\n';
        }
        b
    }

    /// The members before the disk's data: OVF, manifest, the disk's header.
    fn prefix(&self, disk: Option<&KnownDisk>) -> Vec<u8> {
        let (len, sha, populated) =
            disk.map_or((0, [0u8; 32], 0), |k| (k.len, k.sha256, k.populated));
        let ovf = self.ovf_bytes(len, populated);
        let ovf_sha: [u8; 32] = sha2::Sha256::digest(&ovf).into();
        let mf = manifest(&self.opts, &ovf_sha, &sha).into_bytes();
        let mut b = Vec::new();
        for (name, body) in [(self.opts.ovf_name(), &ovf), (self.opts.mf_name(), &mf)] {
            b.extend_from_slice(&tar::header(
                &name,
                body.len() as u64,
                self.mtime,
                Flavor::Ustar,
            ));
            b.extend_from_slice(body);
            b.resize(b.len() + tar::padding(body.len() as u64) as usize, 0);
        }
        b.extend_from_slice(&tar::header(
            &self.opts.disk_name(),
            len,
            self.mtime,
            Flavor::Ustar,
        ));
        b
    }
}

impl OvaWriter {
    /// The disk's writer alone, as a rehearsal runs it.
    pub(crate) fn disk_writer(size: u64, opts: &OvaOptions) -> Result<StreamWriter> {
        StreamWriter::new(size, opts.vmdk.clone())
    }
}

impl Writer for OvaWriter {
    type Encoder = <StreamWriter as Writer>::Encoder;

    fn format(&self) -> Format {
        Format::Ova
    }

    fn unit_size(&self) -> u64 {
        self.vmdk.unit_size()
    }

    fn needs_plan(&self) -> bool {
        false
    }

    fn output_len(&self) -> Option<u64> {
        None
    }

    fn needs_seek(&self) -> bool {
        self.known.is_none()
    }

    fn light_encoder(&self) -> bool {
        false
    }

    fn disk_size(&self) -> Option<u64> {
        Some(self.head.capacity)
    }

    fn embeds_ids(&self) -> bool {
        true
    }

    fn set_identity(&mut self, identity: &crate::identity::Identity) {
        self.vmdk.set_identity(identity);
        self.head.mtime = identity.epoch();
    }

    fn measure_needs_plan(&self) -> bool {
        true
    }

    fn measure(&self, plan: Option<&Plan>) -> Result<Measure> {
        let m = self.vmdk.measure(plan)?;
        let around = |v: u64| {
            let prefix = self.head.prefix(None).len() as u64;
            (prefix + v + tar::padding(v) + 2 * tar::BLOCK).next_multiple_of(tar::RECORD)
        };
        Ok(Measure {
            required: around(m.required),
            fully_allocated: around(m.fully_allocated),
            exact: false,
        })
    }

    fn encoder(&self) -> Self::Encoder {
        self.vmdk.encoder()
    }

    fn begin(&mut self, plan: Option<&Plan>, out: &mut Output) -> Result<()> {
        let prefix = self.head.prefix(self.known.as_ref());
        out.write(&Bytes::from_vec(prefix))?;
        self.disk_header_at = out.position() - tar::BLOCK;
        out.set_base(out.position());
        self.vmdk.begin(plan, out)
    }

    fn commit(
        &mut self,
        encoded: <Self::Encoder as crate::writer::Encoder>::Encoded,
        out: &mut Output,
    ) -> Result<()> {
        self.vmdk.commit(encoded, out)
    }

    fn finish(self, out: &mut Output) -> Result<WriterSummary> {
        let OvaWriter {
            head,
            vmdk,
            known,
            disk_header_at,
        } = self;
        let summary = vmdk.finish(out)?;
        let len = out.position();
        let populated = summary.allocated_units * summary.unit_size;
        let disk = match known {
            Some(k) => {
                if k.len != len {
                    return Err(Error::new(
                        ErrorKind::Internal,
                        format!(
                            "internal error: the disk file came out {len} bytes, its rehearsal {}",
                            k.len
                        ),
                    ));
                }
                k
            }
            None => KnownDisk {
                len,
                sha256: out.sha256_of(0, len)?,
                populated,
            },
        };
        out.set_base(0);
        let end = disk_header_at + tar::BLOCK + len;
        let tail = (end + tar::padding(end) + 2 * tar::BLOCK).next_multiple_of(tar::RECORD) - end;
        out.write_zeros(tail)?;
        if known.is_none() {
            out.write_at(0, &head.prefix(Some(&disk)))?;
        }
        Ok(WriterSummary {
            format: Format::Ova,
            ..summary
        })
    }
}

/// What the OVF says of one disk.
#[derive(Debug, Clone, PartialEq, Eq)]
struct OvfDisk {
    id: String,
    href: String,
    capacity: Option<u64>,
}

/// The disks an OVF descriptor lists, in DiskSection's order, with their files.
fn ovf_disks(xml: &[u8]) -> Result<Vec<OvfDisk>> {
    let mut reader = quick_xml::Reader::from_reader(xml);
    let mut files: Vec<(String, String, bool)> = Vec::new();
    let mut disks: Vec<(String, String, Option<u64>, Option<u64>)> = Vec::new();
    let mut buf = Vec::new();
    let local = |n: &[u8]| -> Vec<u8> { n.rsplit(|&c| c == b':').next().unwrap_or(n).to_vec() };
    loop {
        let ev = reader
            .read_event_into(&mut buf)
            .map_err(|e| bad(0, format!("the OVF descriptor is not well-formed XML: {e}")))?;
        match ev {
            Event::Eof => break,
            Event::Start(e) | Event::Empty(e) => {
                let name = local(e.name().as_ref());
                let mut attrs = std::collections::HashMap::new();
                for a in e.attributes().flatten() {
                    let v = a
                        .unescape_value()
                        .map(|v| v.into_owned())
                        .unwrap_or_default();
                    attrs.insert(local(a.key.as_ref()), v);
                }
                let get = |k: &str| attrs.get(k.as_bytes()).cloned();
                match name.as_slice() {
                    b"File" => files.push((
                        get("id").unwrap_or_default(),
                        get("href").unwrap_or_default(),
                        get("compression").is_some_and(|c| !c.is_empty() && c != "identity")
                            || get("chunkSize").is_some(),
                    )),
                    b"Disk" => {
                        let units = get("capacityAllocationUnits");
                        let scale = match units.as_deref() {
                            None | Some("byte") => Some(1u64),
                            Some(u) => parse_units(u),
                        };
                        let capacity = get("capacity")
                            .and_then(|c| c.parse::<u64>().ok())
                            .zip(scale)
                            .and_then(|(c, s)| c.checked_mul(s));
                        disks.push((
                            get("diskId").unwrap_or_default(),
                            get("fileRef").unwrap_or_default(),
                            capacity,
                            None,
                        ));
                    }
                    _ => {}
                }
                if files.len() + disks.len() > tar::MAX_MEMBERS {
                    return Err(bad(0, "the OVF lists too many files or disks"));
                }
            }
            _ => {}
        }
        buf.clear();
    }
    let mut out = Vec::new();
    for (id, file_ref, capacity, _) in disks {
        let Some((_, href, packed)) = files.iter().find(|f| f.0 == file_ref) else {
            return Err(bad(
                0,
                format!(
                    "the OVF's disk '{id}' refers to the file '{file_ref}', which References lacks"
                ),
            ));
        };
        if *packed {
            return Err(Error::unsupported(format!(
                "the OVF's disk file '{href}' is compressed or chunked, which this version does not read"
            ))
            .with_format(Format::Ova));
        }
        out.push(OvfDisk {
            id,
            href: href.clone(),
            capacity,
        });
    }
    Ok(out)
}

/// `byte * 2^N` (the usual form) as a multiplier.
fn parse_units(u: &str) -> Option<u64> {
    let rest = u.trim().strip_prefix("byte")?.trim();
    if rest.is_empty() {
        return Some(1);
    }
    let exp = rest.strip_prefix('*')?.trim().strip_prefix("2^")?.trim();
    let e: u32 = exp.parse().ok()?;
    1u64.checked_shl(e).filter(|_| e < 64)
}

/// The manifest's lines: `ALG(name)= hex` (ovftool) or `ALG (name) = hex` (VirtualBox).
fn manifest_lines(text: &str) -> Vec<(String, String, String)> {
    text.lines()
        .filter_map(|l| {
            let open = l.find('(')?;
            let close = l.rfind(')')?;
            let hexd = l.get(close + 1..)?.trim().strip_prefix('=')?.trim();
            let name = l.get(open + 1..close)?;
            Some((
                l[..open].trim().to_ascii_uppercase(),
                name.to_string(),
                hexd.to_ascii_lowercase(),
            ))
        })
        .collect()
}

/// The largest OVF descriptor or manifest read.
const MAX_TEXT: u64 = 4 << 20;

/// Open an OVA: the disk `disk` (from 1) of its OVF, verified against the manifest.
pub(crate) fn open(src: Box<dyn Source>, disk: usize) -> Result<Box<dyn Reader>> {
    let actual_size = src.allocated_size();
    let len = src.len();
    let mut read = |at: u64, buf: &mut [u8]| Source::read_exact_at(src.as_ref(), at, buf);
    let members = tar::members(Format::Ova, Some(len), &mut read)?;
    let find = |name: &str| {
        members
            .iter()
            .find(|m| m.regular && m.name.trim_start_matches("./") == name)
    };
    let ovf_member = members
        .iter()
        .find(|m| m.regular && m.name.to_ascii_lowercase().ends_with(".ovf"))
        .ok_or_else(|| bad(0, "the archive holds no OVF descriptor (.ovf)"))?;
    let text = |m: &Member| -> Result<Vec<u8>> {
        if m.stored > MAX_TEXT || m.sparse.is_some() {
            return Err(bad(
                m.data_at,
                format!("the member '{}' is too large for a descriptor", m.name),
            ));
        }
        let mut b = vec![0u8; m.stored as usize];
        src.read_exact_at(m.data_at, &mut b)?;
        Ok(b)
    };
    let disks = ovf_disks(&text(ovf_member)?)?;
    if disks.is_empty() {
        return Err(bad(ovf_member.data_at, "the OVF lists no disk"));
    }
    let chosen = disks.get(disk.wrapping_sub(1)).ok_or_else(|| {
        Error::invalid_argument(format!(
            "--disk {disk}: the OVA has {} disk(s), numbered from 1",
            disks.len()
        ))
    })?;
    let disk_member = find(&chosen.href).ok_or_else(|| {
        bad(
            0,
            format!(
                "the OVF's disk file '{}' is not in the archive",
                chosen.href
            ),
        )
    })?;
    // The manifest: every digest it lists is checked.
    let mut verified = Vec::new();
    if let Some(mf) = members
        .iter()
        .find(|m| m.regular && m.name.to_ascii_lowercase().ends_with(".mf"))
    {
        for (alg, name, want) in manifest_lines(&String::from_utf8_lossy(&text(mf)?)) {
            let m = find(&name).ok_or_else(|| {
                bad(
                    mf.data_at,
                    format!("the manifest lists '{name}', which the archive lacks"),
                )
            })?;
            if m.sparse.is_some() {
                return Err(bad(m.data_at, format!("the member '{name}' is sparse")));
            }
            let got = match alg.as_str() {
                "SHA256" => digest_member::<sha2::Sha256>(src.as_ref(), m)?,
                "SHA1" => digest_member::<sha1::Sha1>(src.as_ref(), m)?,
                "SHA512" => digest_member::<sha2::Sha512>(src.as_ref(), m)?,
                other => {
                    return Err(Error::unsupported(format!(
                        "the manifest's digest {other} is not one this version checks (SHA256, SHA1, SHA512)"
                    ))
                    .with_format(Format::Ova))
                }
            };
            if got != want {
                return Err(bad(
                    m.data_at,
                    format!("the {alg} of '{name}' is {got}, the manifest says {want}"),
                ));
            }
            verified.push(name);
        }
    }
    let disk_source = MemberSource::new(Arc::new(src), disk_member.clone());
    let inner = crate::open::open_packaged_disk(Box::new(disk_source)).map_err(|e| {
        let msg = format!("the OVA's disk '{}': {}", chosen.href, e.message());
        Error::new(e.kind(), msg).with_format(Format::Ova)
    })?;
    if let Some(c) = chosen.capacity {
        if c != inner.virtual_size() && c.div_ceil(512) != inner.virtual_size().div_ceil(512) {
            return Err(bad(
                0,
                format!(
                    "the OVF gives disk '{}' a capacity of {c} bytes, its file holds {}",
                    chosen.id,
                    inner.virtual_size()
                ),
            ));
        }
    }
    Ok(Box::new(Packaged {
        format: Format::Ova,
        inner,
        details: vec![
            ("disks".into(), disks.len().to_string()),
            ("disk".into(), format!("{disk} ({})", chosen.href)),
            (
                "manifest".into(),
                if verified.is_empty() {
                    "none".into()
                } else {
                    format!("verified ({} members)", verified.len())
                },
            ),
        ],
        actual_size,
    }))
}

/// The hex digest of a member's bytes.
fn digest_member<D: sha2::Digest>(src: &dyn Source, m: &Member) -> Result<String> {
    let mut h = D::new();
    let mut buf = vec![0u8; (4 << 20).min(m.stored as usize)];
    let mut pos = 0u64;
    while pos < m.stored {
        let n = (m.stored - pos).min(buf.len() as u64) as usize;
        src.read_exact_at(m.data_at + pos, &mut buf[..n])?;
        h.update(&buf[..n]);
        pos += n as u64;
    }
    Ok(hex::encode(h.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_written_ovf_names_its_disk_and_reads_back() {
        let o = OvaOptions::parse(WriterOptions::new(), "vm").expect("options");
        let x = ovf(&o, 1 << 30, 12345, 4096);
        let disks = ovf_disks(x.as_bytes()).expect("parse");
        assert_eq!(
            disks,
            vec![OvfDisk {
                id: "vmdisk1".into(),
                href: "vm-disk1.vmdk".into(),
                capacity: Some(1 << 30)
            }]
        );
        assert_eq!(parse_units("byte * 2^20"), Some(1 << 20));
        let lines = manifest_lines("SHA256(a.ovf)= AB\nSHA1 (b c.vmdk) = cd\nnoise\n");
        assert_eq!(
            lines,
            vec![
                ("SHA256".into(), "a.ovf".into(), "ab".into()),
                ("SHA1".into(), "b c.vmdk".into(), "cd".into())
            ]
        );
        assert_eq!(parse_units("byte * 2^64"), None);
    }
}
