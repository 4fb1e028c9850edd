//! Blockwise 8-bit quantization with bitsandbytes' dynamic map: each block of `blocksize` values is scaled by its
//! largest magnitude (absmax) into [-1, 1] and each value stored as the index of a code of the map.
//!
//! Codes are chosen exactly as bitsandbytes' CPU kernel (`quantize_cpu_impl`) chooses them: the scaled value is
//! placed in one of 65,536 even bins over [-1, 1] and each bin maps to the code nearest its centre. So a value
//! whose nearest code is within half a bin (1.5e-5) of a midpoint may get the other neighbour, and a zero gets the
//! smallest positive code (2.1e-5): both cost at most half a bin more than the nearest code would.

use std::sync::OnceLock;

use rayon::prelude::*;

use super::codes::DYNAMIC_MAP;
use super::float::{with_floats, Float, Floats, FloatsMut};
use super::{block_count, blocks_per_task, check_blocksize, check_len, in_pool, QuantError};

const BINS: usize = 1 << 16;

/// Quantizes `input` block by block: `codes` receives one code per value, `absmax` one scale per block.
pub fn quantize_8bit(
    input: Floats<'_>,
    blocksize: usize,
    codes: &mut [u8],
    absmax: &mut [f32],
) -> Result<(), QuantError> {
    check_blocksize(blocksize, false)?;
    let n = input.len();
    check_len("codes", n, codes.len())?;
    check_len("absmax", block_count(n, blocksize), absmax.len())?;
    let bins = dynamic_map_bins();
    in_pool(|| with_floats!(input, values => quantize_typed(values, blocksize, codes, absmax, bins)));
    Ok(())
}

/// The inverse of [`quantize_8bit`] with the map `code` (256 values) that quantized them: `out[i]` is
/// `code[codes[i]] * absmax[block of i]`, rounded to `out`'s type.
pub fn dequantize_8bit(
    codes: &[u8],
    absmax: &[f32],
    code: &[f32],
    blocksize: usize,
    out: FloatsMut<'_>,
) -> Result<(), QuantError> {
    check_blocksize(blocksize, false)?;
    let code: &[f32; 256] = code.try_into().map_err(|_| QuantError::Size {
        buffer: "code",
        expected: 256,
        actual: code.len(),
    })?;
    let n = codes.len();
    check_len("output", n, out.len())?;
    check_len("absmax", block_count(n, blocksize), absmax.len())?;
    in_pool(|| with_floats!(mut out, out => dequantize_typed(codes, absmax, code, blocksize, out)));
    Ok(())
}

fn quantize_typed<T: Float>(input: &[T], blocksize: usize, codes: &mut [u8], absmax: &mut [f32], bins: &[u8; BINS]) {
    input
        .par_chunks(blocksize)
        .zip(codes.par_chunks_mut(blocksize))
        .zip(absmax.par_iter_mut())
        .with_min_len(blocks_per_task(blocksize))
        .for_each_init(Vec::new, |scratch, ((values, codes), absmax)| {
            *absmax = quantize_block(T::widen(values, scratch), codes, bins)
        });
}

/// Returns the block's absmax. NaN values are left out of it and get code 0; a block of zeros gets absmax 0 and
/// code 0 throughout (bitsandbytes does the same).
fn quantize_block(values: &[f32], codes: &mut [u8], bins: &[u8; BINS]) -> f32 {
    let mut absmax = 0.0f32;
    for value in values {
        let magnitude = value.abs();
        if magnitude > absmax {
            absmax = magnitude;
        }
    }
    if absmax == 0.0 {
        codes.fill(0);
        return absmax;
    }
    let inverse = 1.0 / absmax;
    for (value, code) in values.iter().zip(codes) {
        *code = bins[bin(value * inverse)];
    }
    absmax
}

/// The bin of a scaled value: `trunc(((v + 1) * 0.5) * 65535 + 0.5)` with the last multiply-add fused, as
/// bitsandbytes' compiled kernel computes it. In f64 the product and sum are exact (24-bit times 16-bit
/// mantissas), so one rounding to f32 gives the fused result. NaN falls in bin 0.
fn bin(scaled: f32) -> usize {
    let half = (scaled.clamp(-1.0, 1.0) + 1.0) * 0.5;
    let position = (f64::from(half) * (BINS - 1) as f64 + 0.5) as f32;
    position as u16 as usize
}

fn dynamic_map_bins() -> &'static [u8; BINS] {
    static BINS_OF_DYNAMIC_MAP: OnceLock<Box<[u8; BINS]>> = OnceLock::new();
    BINS_OF_DYNAMIC_MAP.get_or_init(|| nearest_code_per_bin(&DYNAMIC_MAP))
}

/// For each bin, the code nearest the bin's centre, a centre on a midpoint going to the lower code.
fn nearest_code_per_bin(code: &[f32; 256]) -> Box<[u8; BINS]> {
    let midpoints: Vec<f32> = code.windows(2).map(|pair| (pair[0] + pair[1]) * 0.5).collect();
    let mut bins = Box::new([0u8; BINS]);
    let mut index = 0;
    for (i, slot) in bins.iter_mut().enumerate() {
        let centre = (2.0 * i as f32) / (BINS - 1) as f32 - 1.0;
        while index < midpoints.len() && midpoints[index] < centre {
            index += 1;
        }
        *slot = index as u8;
    }
    bins
}

fn dequantize_typed<T: Float>(codes: &[u8], absmax: &[f32], code: &[f32; 256], blocksize: usize, out: &mut [T]) {
    codes
        .par_chunks(blocksize)
        .zip(out.par_chunks_mut(blocksize))
        .zip(absmax.par_iter())
        .with_min_len(blocks_per_task(blocksize))
        .for_each_init(Vec::new, |scratch, ((codes, out), &scale)| {
            T::fill_from_f32(out, scratch, |out| {
                for (&c, value) in codes.iter().zip(out) {
                    *value = code[c as usize] * scale;
                }
            })
        });
}

#[cfg(test)]
mod tests {
    use half::bf16;
    use proptest::prelude::*;

    use super::*;

    fn round_trip(input: &[f32], blocksize: usize) -> (Vec<u8>, Vec<f32>, Vec<f32>) {
        let mut codes = vec![0; input.len()];
        let mut absmax = vec![0.0; block_count(input.len(), blocksize)];
        quantize_8bit(Floats::F32(input), blocksize, &mut codes, &mut absmax).unwrap();
        let mut out = vec![0.0; input.len()];
        dequantize_8bit(&codes, &absmax, &DYNAMIC_MAP, blocksize, FloatsMut::F32(&mut out)).unwrap();
        (codes, absmax, out)
    }

    /// Half the widest gap between neighbouring codes (near ±1) plus half a bin: the most a scaled value moves.
    fn scaled_error_bound() -> f32 {
        let widest = DYNAMIC_MAP.windows(2).map(|pair| pair[1] - pair[0]).fold(0.0, f32::max);
        widest / 2.0 + 1.0 / (BINS - 1) as f32
    }

    #[test]
    fn known_values_get_bitsandbytes_codes() {
        // the block's absmax is 1: 1.0 is the top code, -1.0 the bottom one, 0.0 the smallest positive code
        let (codes, absmax, out) = round_trip(&[0.0, 1.0, -1.0, -0.5], 4096);
        assert_eq!(codes, [128 + 3, 255, 0, 35]);
        assert_eq!(absmax, [1.0]);
        assert_eq!(out[1], 1.0);
    }

    #[test]
    fn zero_and_nan_blocks_get_code_zero() {
        let (codes, absmax, _) = round_trip(&[0.0, -0.0, f32::NAN, 2.0], 2);
        assert_eq!(absmax, [0.0, 2.0]);
        assert_eq!(codes, [0, 0, 0, 255]);
    }

    #[test]
    fn sizes_are_checked() {
        let input = [1.0f32; 10];
        let mut absmax = [0.0; 3];
        let err = quantize_8bit(Floats::F32(&input), 4, &mut [0; 9], &mut absmax).unwrap_err();
        assert_eq!(
            err,
            QuantError::Size {
                buffer: "codes",
                expected: 10,
                actual: 9
            }
        );
        let err = quantize_8bit(Floats::F32(&input), 4, &mut [0; 10], &mut [0.0; 2]).unwrap_err();
        assert_eq!(
            err,
            QuantError::Size {
                buffer: "absmax",
                expected: 3,
                actual: 2
            }
        );
        assert!(quantize_8bit(Floats::F32(&input), 0, &mut [0; 10], &mut absmax).is_err());
        let mut out = [0.0f32; 10];
        assert!(dequantize_8bit(&[0; 10], &[1.0; 3], &DYNAMIC_MAP[..255], 4, FloatsMut::F32(&mut out)).is_err());
        assert!(dequantize_8bit(&[0; 10], &[1.0; 4], &DYNAMIC_MAP, 4, FloatsMut::F32(&mut out)).is_err());
    }

    #[test]
    fn bfloat16_in_and_out() {
        let input: Vec<bf16> = (0..100).map(|i| bf16::from_f32(i as f32 - 50.0)).collect();
        let mut codes = vec![0; 100];
        let mut absmax = vec![0.0; 2];
        quantize_8bit(Floats::Bf16(&input), 64, &mut codes, &mut absmax).unwrap();
        assert_eq!(absmax, [50.0, 49.0]);
        let mut out = vec![bf16::ZERO; 100];
        dequantize_8bit(&codes, &absmax, &DYNAMIC_MAP, 64, FloatsMut::Bf16(&mut out)).unwrap();
        for (a, b) in input.iter().zip(&out) {
            assert!(
                (a.to_f32() - b.to_f32()).abs() <= 50.0 * scaled_error_bound() + 0.5,
                "{a} vs {b}"
            );
        }
    }

    proptest! {
        #[test]
        fn round_trip_error_is_within_the_blockwise_bound(
            input in prop::collection::vec(-1.0e6f32..1.0e6, 0..3000),
            blocksize in prop::sample::select(vec![64usize, 256, 4096]),
        ) {
            let (_, absmax, out) = round_trip(&input, blocksize);
            let bound = scaled_error_bound();
            for (i, (a, b)) in input.iter().zip(&out).enumerate() {
                let scale = absmax[i / blocksize];
                prop_assert!((a - b).abs() <= scale * bound * 1.0001, "value {i}: {a} came back as {b}");
            }
        }
    }
}
