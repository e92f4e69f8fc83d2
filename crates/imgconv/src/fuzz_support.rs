//! Entry points for the fuzz targets under `fuzz/`, kept in the library so that ordinary tests
//! run them too (on the seed inputs) and they never drift from the code they exercise.

use crate::convert::{convert, ConvertOptions, Destination};
use crate::detect::detect;
use crate::digest::DigestKind;
use crate::model::Format;
use crate::open::open_source;
use crate::pipeline::PipelineConfig;
use crate::planner::plan;
use crate::progress::{CancelToken, NoProgress};
use crate::sink::VecSink;
use crate::source::MemSource;

/// Detection, RAW reading, planning and RAW conversion of arbitrary bytes. The first byte picks
/// the chunk size and window, so the fuzzer explores chunk and unit edges. Panics (the fuzzer's
/// signal) if the output differs from the input or the plan disagrees with the content.
pub fn raw_extents(input: &[u8]) {
    let Some((&knob, image)) = input.split_first() else {
        return;
    };
    let tail_at = image.len().saturating_sub(512);
    let _ = detect(image, (image.len() >= 512).then(|| &image[tail_at..]));

    let Ok(reader) = open_source(Box::new(MemSource::new(image.to_vec())), Some(Format::Raw))
    else {
        return;
    };
    let unit = 512u64 << (knob & 3);
    let chunk_size = unit << ((knob >> 2) & 3);
    let window = usize::from(knob >> 4) % 5 + 1;
    let cancel = CancelToken::new();

    let Ok(p) = plan(&*reader, unit, chunk_size, &cancel) else {
        panic!("planning an in-memory RAW image failed");
    };
    for (i, piece) in image.chunks(unit as usize).enumerate() {
        let allocated = p.is_allocated(crate::model::UnitIndex(i as u64));
        assert_eq!(allocated, piece.iter().any(|&b| b != 0), "unit {i}");
    }

    let sink = VecSink::new();
    let mut opts = ConvertOptions::new(Format::Raw).with_digests(&[DigestKind::Crc32c]);
    opts.pipeline = PipelineConfig { chunk_size, window };
    let result = convert(
        &*reader,
        Destination::Sink(Box::new(sink.clone())),
        &opts,
        &NoProgress,
        &cancel,
    );
    assert!(result.is_ok(), "converting an in-memory RAW image failed");
    assert_eq!(sink.contents(), image);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fuzz target's seeds, and inputs that once mattered, run as a plain test.
    #[test]
    fn raw_extents_seeds() {
        let mut seeds: Vec<Vec<u8>> = vec![
            vec![],
            vec![0],
            vec![0xff; 1],
            vec![0x00; 513],
            b"\x05QFI\xfb\0\0\0\x03".to_vec(),
        ];
        for knob in [0u8, 3, 0x0f, 0x5a, 0xff] {
            let mut v = vec![knob];
            v.extend((0..9000u32).map(|i| if (i / 700) % 2 == 0 { (i % 7) as u8 } else { 0 }));
            seeds.push(v);
        }
        for s in seeds {
            raw_extents(&s);
        }
    }
}
