//! Blockwise 4-bit quantization (FP4 or NF4): each block of `blocksize` values is scaled by its absmax into
//! [-1, 1] and each value stored as a 4-bit code, two per byte, the first value in the high nibble. An odd count
//! leaves the last low nibble holding the code of 0.0.
//!
//! This follows bitsandbytes' CPU quantizer value for value: full blocks are multiplied by `1 / absmax`, the last,
//! partial block is divided by its absmax; a scale below 1e-38 counts as 1e-38, and the partial block stores that
//! clamped scale while full blocks store the true one. A NaN makes its whole block NaN, coded as the highest
//! bucket.

use rayon::prelude::*;

use super::codes::{Buckets, FourBitType};
use super::float::{with_floats, Float, Floats, FloatsMut};
use super::{block_count, blocks_per_task, check_blocksize, check_len, in_pool, QuantError};

/// The smallest scale divided by: torch's `clamp(min=1e-38)` in bitsandbytes.
const TINY_SCALE: f32 = 1e-38;

/// Quantizes `input` block by block: `packed` receives `ceil(n / 2)` bytes, `absmax` one scale per block.
/// `blocksize` must be even, so that no byte straddles two blocks.
pub fn quantize_4bit(
    input: Floats<'_>,
    kind: FourBitType,
    blocksize: usize,
    packed: &mut [u8],
    absmax: &mut [f32],
) -> Result<(), QuantError> {
    check_blocksize(blocksize, true)?;
    let n = input.len();
    check_len("packed codes", n.div_ceil(2), packed.len())?;
    check_len("absmax", block_count(n, blocksize), absmax.len())?;
    in_pool(|| with_floats!(input, values => quantize_typed(values, kind.buckets(), blocksize, packed, absmax)));
    Ok(())
}

/// The inverse of [`quantize_4bit`]: `out` (of `n` values) receives `code[nibble] * absmax[block]` rounded to its
/// type.
pub fn dequantize_4bit(
    packed: &[u8],
    absmax: &[f32],
    kind: FourBitType,
    blocksize: usize,
    out: FloatsMut<'_>,
) -> Result<(), QuantError> {
    check_blocksize(blocksize, true)?;
    let n = out.len();
    check_len("packed codes", n.div_ceil(2), packed.len())?;
    check_len("absmax", block_count(n, blocksize), absmax.len())?;
    in_pool(|| with_floats!(mut out, out => dequantize_typed(packed, absmax, kind.code(), blocksize, out)));
    Ok(())
}

fn quantize_typed<T: Float>(input: &[T], buckets: &Buckets, blocksize: usize, packed: &mut [u8], absmax: &mut [f32]) {
    input
        .par_chunks(blocksize)
        .zip(packed.par_chunks_mut(blocksize / 2))
        .zip(absmax.par_iter_mut())
        .with_min_len(blocks_per_task(blocksize))
        .for_each_init(Vec::new, |scratch, ((values, packed), absmax)| {
            *absmax = quantize_block(T::widen(values, scratch), buckets, values.len() < blocksize, packed)
        });
}

/// Returns the absmax to store for the block.
fn quantize_block(values: &[f32], buckets: &Buckets, partial: bool, packed: &mut [u8]) -> f32 {
    let mut absmax = 0.0f32;
    for value in values {
        let magnitude = value.abs();
        if magnitude > absmax || magnitude.is_nan() {
            absmax = magnitude;
        }
    }
    // a NaN absmax stays NaN, as in torch's clamp
    let scale = if absmax < TINY_SCALE { TINY_SCALE } else { absmax };
    let inverse = 1.0 / scale;
    let code_of = |&value: &f32| bucket(buckets, if partial { value / scale } else { value * inverse });
    let mut pairs = values.chunks_exact(2);
    for (byte, pair) in packed.iter_mut().zip(&mut pairs) {
        *byte = (code_of(&pair[0]) << 4) | code_of(&pair[1]);
    }
    if let ([last], Some(byte)) = (pairs.remainder(), packed.last_mut()) {
        *byte = (code_of(last) << 4) | bucket(buckets, 0.0);
    }
    if partial {
        scale
    } else {
        absmax
    }
}

/// The code of a scaled value: the number of midpoints strictly below it, clamped to [-1, 1] first, mapped to
/// the code at that rank. NaN takes the top rank, as in `torch.bucketize`.
fn bucket(buckets: &Buckets, scaled: f32) -> u8 {
    let clamped = scaled.clamp(-1.0, 1.0);
    let rank = if clamped.is_nan() {
        buckets.midpoints.len()
    } else {
        buckets.midpoints.iter().filter(|&&midpoint| clamped > midpoint).count()
    };
    buckets.ascending[rank]
}

fn dequantize_typed<T: Float>(packed: &[u8], absmax: &[f32], code: &[f32; 16], blocksize: usize, out: &mut [T]) {
    packed
        .par_chunks(blocksize / 2)
        .zip(out.par_chunks_mut(blocksize))
        .zip(absmax.par_iter())
        .with_min_len(blocks_per_task(blocksize))
        .for_each_init(Vec::new, |scratch, ((packed, out), &scale)| {
            T::fill_from_f32(out, scratch, |out| {
                for (pair, &byte) in out.chunks_mut(2).zip(packed) {
                    pair[0] = code[(byte >> 4) as usize] * scale;
                    if let Some(second) = pair.get_mut(1) {
                        *second = code[(byte & 0x0f) as usize] * scale;
                    }
                }
            })
        });
}

#[cfg(test)]
mod tests {
    use half::f16;
    use proptest::prelude::*;

    use super::*;

    fn quantize(input: &[f32], kind: FourBitType, blocksize: usize) -> (Vec<u8>, Vec<f32>) {
        let mut packed = vec![0; input.len().div_ceil(2)];
        let mut absmax = vec![0.0; block_count(input.len(), blocksize)];
        quantize_4bit(Floats::F32(input), kind, blocksize, &mut packed, &mut absmax).unwrap();
        (packed, absmax)
    }

    fn dequantize(packed: &[u8], absmax: &[f32], kind: FourBitType, blocksize: usize, n: usize) -> Vec<f32> {
        let mut out = vec![0.0; n];
        dequantize_4bit(packed, absmax, kind, blocksize, FloatsMut::F32(&mut out)).unwrap();
        out
    }

    /// Half the widest gap between neighbouring codes: the most a scaled value moves.
    fn scaled_error_bound(kind: FourBitType) -> f32 {
        let mut sorted = *kind.code();
        sorted.sort_by(f32::total_cmp);
        sorted.windows(2).map(|pair| pair[1] - pair[0]).fold(0.0, f32::max) / 2.0
    }

    #[test]
    fn nibbles_are_high_first_and_an_odd_tail_pads_with_the_code_of_zero() {
        let (packed, absmax) = quantize(&[1.0, -1.0, 0.0], FourBitType::Nf4, 64);
        assert_eq!(packed, [0xf0, 0x77]);
        assert_eq!(absmax, [1.0]);
        // FP4: +1 is code 3, -1 code 11; a tiny positive value goes to the zero ranked after code 0 (code 8)
        let (packed, _) = quantize(&[1.0, -1.0, 0.001, -0.001], FourBitType::Fp4, 64);
        assert_eq!(packed, [0x3b, 0x80]);
    }

    #[test]
    fn partial_blocks_store_the_clamped_scale_and_full_blocks_the_true_one() {
        let (packed, absmax) = quantize(&[0.0; 65], FourBitType::Nf4, 64);
        assert_eq!(absmax, [0.0, TINY_SCALE]);
        assert!(packed.iter().all(|&byte| byte == 0x77));
        let out = dequantize(&packed, &absmax, FourBitType::Nf4, 64, 65);
        assert!(out.iter().all(|&v| v == 0.0));
    }

    #[test]
    fn a_nan_spoils_its_block_only() {
        let mut input = vec![0.5f32; 128];
        input[3] = f32::NAN;
        let (packed, absmax) = quantize(&input, FourBitType::Nf4, 64);
        assert!(absmax[0].is_nan());
        assert_eq!(absmax[1], 0.5);
        assert!(packed[..32].iter().all(|&byte| byte == 0xff));
        assert!(
            packed[32..].iter().all(|&byte| byte == 0xff),
            "0.5 / 0.5 is 1.0, the top NF4 code"
        );
    }

    #[test]
    fn sizes_and_blocksize_are_checked() {
        let input = [1.0f32; 9];
        let err = quantize_4bit(Floats::F32(&input), FourBitType::Nf4, 64, &mut [0; 4], &mut [0.0]).unwrap_err();
        assert_eq!(
            err,
            QuantError::Size {
                buffer: "packed codes",
                expected: 5,
                actual: 4
            }
        );
        assert!(quantize_4bit(Floats::F32(&input), FourBitType::Nf4, 3, &mut [0; 5], &mut [0.0; 3]).is_err());
        let mut out = [0.0f32; 9];
        let err = dequantize_4bit(&[0; 5], &[1.0; 2], FourBitType::Fp4, 64, FloatsMut::F32(&mut out)).unwrap_err();
        assert_eq!(
            err,
            QuantError::Size {
                buffer: "absmax",
                expected: 1,
                actual: 2
            }
        );
    }

    #[test]
    fn float16_in_and_out() {
        let input: Vec<f16> = (0..70).map(|i| f16::from_f32((i as f32 - 35.0) / 7.0)).collect();
        let mut packed = vec![0; 35];
        let mut absmax = vec![0.0; 2];
        quantize_4bit(Floats::F16(&input), FourBitType::Fp4, 64, &mut packed, &mut absmax).unwrap();
        let mut out = vec![f16::ZERO; 70];
        dequantize_4bit(&packed, &absmax, FourBitType::Fp4, 64, FloatsMut::F16(&mut out)).unwrap();
        let bound = scaled_error_bound(FourBitType::Fp4) * 5.0 + 0.01;
        for (a, b) in input.iter().zip(&out) {
            assert!((a.to_f32() - b.to_f32()).abs() <= bound, "{a} vs {b}");
        }
    }

    proptest! {
        #[test]
        fn round_trip_error_is_within_the_blockwise_bound(
            input in prop::collection::vec(-1.0e4f32..1.0e4, 0..700),
            blocksize in prop::sample::select(vec![32usize, 64, 128]),
            nf4 in any::<bool>(),
        ) {
            let kind = if nf4 { FourBitType::Nf4 } else { FourBitType::Fp4 };
            let (packed, absmax) = quantize(&input, kind, blocksize);
            let out = dequantize(&packed, &absmax, kind, blocksize, input.len());
            let bound = scaled_error_bound(kind);
            for (i, (a, b)) in input.iter().zip(&out).enumerate() {
                let scale = absmax[i / blocksize];
                prop_assert!((a - b).abs() <= scale * bound * 1.0001, "value {i}: {a} came back as {b}");
            }
        }
    }
}
