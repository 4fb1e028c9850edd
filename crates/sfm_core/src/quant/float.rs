//! The float types the kernels read and write (float32, float16, bfloat16), views of raw bytes as arrays of
//! them, and casts between them.

use half::slice::HalfFloatSliceExt;
use half::{bf16, f16};
use rayon::prelude::*;

use super::{check_len, in_pool, QuantError, VALUES_PER_TASK};

/// A float element type. Kernels compute in f32 and convert whole slices at a time (float16 has vector
/// instructions for it): widening is exact, narrowing rounds to nearest even.
pub trait Float: Copy + Send + Sync + 'static {
    /// Writes `values` widened to f32 into `out` (same length).
    fn widen_into(values: &[Self], out: &mut [f32]);

    /// Writes `values` narrowed to this type into `out` (same length).
    fn narrow(values: &[f32], out: &mut [Self]);

    /// `values` as f32: in `scratch`, unless they are f32 already.
    fn widen<'a>(values: &'a [Self], scratch: &'a mut Vec<f32>) -> &'a [f32] {
        scratch.clear();
        scratch.resize(values.len(), 0.0);
        Self::widen_into(values, scratch);
        scratch
    }

    /// Runs `fill` on f32 slots for `out` (`out` itself when it is f32) and narrows them into `out`.
    fn fill_from_f32(out: &mut [Self], scratch: &mut Vec<f32>, fill: impl FnOnce(&mut [f32])) {
        scratch.clear();
        scratch.resize(out.len(), 0.0);
        fill(scratch);
        Self::narrow(scratch, out);
    }
}

impl Float for f32 {
    fn widen_into(values: &[Self], out: &mut [f32]) {
        out.copy_from_slice(values);
    }

    fn narrow(values: &[f32], out: &mut [Self]) {
        out.copy_from_slice(values);
    }

    fn widen<'a>(values: &'a [Self], _scratch: &'a mut Vec<f32>) -> &'a [f32] {
        values
    }

    fn fill_from_f32(out: &mut [Self], _scratch: &mut Vec<f32>, fill: impl FnOnce(&mut [f32])) {
        fill(out);
    }
}

impl Float for f16 {
    fn widen_into(values: &[Self], out: &mut [f32]) {
        values.convert_to_f32_slice(out);
    }

    /// Saturates at the largest finite float16 (NaN stays NaN), as NVFlare's float16 quantizer clamps before it
    /// casts: a float32 beyond float16's range becomes ±65504, not infinity.
    fn narrow(values: &[f32], out: &mut [Self]) {
        let (min, max) = (f16::MIN.to_f32(), f16::MAX.to_f32());
        let mut clamped = [0.0f32; 256];
        for (values, out) in values.chunks(clamped.len()).zip(out.chunks_mut(clamped.len())) {
            for (slot, value) in clamped.iter_mut().zip(values) {
                *slot = value.clamp(min, max);
            }
            out.convert_from_f32_slice(&clamped[..values.len()]);
        }
    }
}

impl Float for bf16 {
    fn widen_into(values: &[Self], out: &mut [f32]) {
        values.convert_to_f32_slice(out);
    }

    fn narrow(values: &[f32], out: &mut [Self]) {
        out.convert_from_f32_slice(values);
    }
}

/// The name of a float type, as numpy and torch spell it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FloatType {
    F32,
    F16,
    Bf16,
}

impl FloatType {
    pub fn parse(name: &str) -> Result<Self, QuantError> {
        match name {
            "float32" => Ok(FloatType::F32),
            "float16" => Ok(FloatType::F16),
            "bfloat16" => Ok(FloatType::Bf16),
            other => Err(QuantError::UnknownFloatType(other.to_string())),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            FloatType::F32 => "float32",
            FloatType::F16 => "float16",
            FloatType::Bf16 => "bfloat16",
        }
    }
}

/// Bytes seen as an array of one float type.
#[derive(Clone, Copy, Debug)]
pub enum Floats<'a> {
    F32(&'a [f32]),
    F16(&'a [f16]),
    Bf16(&'a [bf16]),
}

/// Bytes to be written as an array of one float type.
#[derive(Debug)]
pub enum FloatsMut<'a> {
    F32(&'a mut [f32]),
    F16(&'a mut [f16]),
    Bf16(&'a mut [bf16]),
}

impl<'a> Floats<'a> {
    /// `bytes` as `ty` values; `buffer` names it in the error when the length is not a whole number of values or
    /// the start is not aligned for the type.
    pub fn from_bytes(bytes: &'a [u8], ty: FloatType, buffer: &'static str) -> Result<Self, QuantError> {
        Ok(match ty {
            FloatType::F32 => Floats::F32(view(bytes, ty, buffer)?),
            FloatType::F16 => Floats::F16(view(bytes, ty, buffer)?),
            FloatType::Bf16 => Floats::Bf16(view(bytes, ty, buffer)?),
        })
    }

    pub fn len(&self) -> usize {
        match self {
            Floats::F32(values) => values.len(),
            Floats::F16(values) => values.len(),
            Floats::Bf16(values) => values.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<'a> FloatsMut<'a> {
    pub fn from_bytes(bytes: &'a mut [u8], ty: FloatType, buffer: &'static str) -> Result<Self, QuantError> {
        Ok(match ty {
            FloatType::F32 => FloatsMut::F32(view_mut(bytes, ty, buffer)?),
            FloatType::F16 => FloatsMut::F16(view_mut(bytes, ty, buffer)?),
            FloatType::Bf16 => FloatsMut::Bf16(view_mut(bytes, ty, buffer)?),
        })
    }

    pub fn len(&self) -> usize {
        match self {
            FloatsMut::F32(values) => values.len(),
            FloatsMut::F16(values) => values.len(),
            FloatsMut::Bf16(values) => values.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// `bytes` as float32 values: scales and code tables are float32 whatever the data's type.
pub fn float32s<'a>(bytes: &'a [u8], buffer: &'static str) -> Result<&'a [f32], QuantError> {
    view(bytes, FloatType::F32, buffer)
}

pub fn float32s_mut<'a>(bytes: &'a mut [u8], buffer: &'static str) -> Result<&'a mut [f32], QuantError> {
    view_mut(bytes, FloatType::F32, buffer)
}

/// Calls `$body` with `$values` bound to the typed slice inside a `Floats` or `FloatsMut`.
macro_rules! with_floats {
    ($floats:expr, $values:ident => $body:expr) => {
        match $floats {
            Floats::F32($values) => $body,
            Floats::F16($values) => $body,
            Floats::Bf16($values) => $body,
        }
    };
    (mut $floats:expr, $values:ident => $body:expr) => {
        match $floats {
            FloatsMut::F32($values) => $body,
            FloatsMut::F16($values) => $body,
            FloatsMut::Bf16($values) => $body,
        }
    };
}
pub(crate) use with_floats;

/// Element-wise conversion of `source` into `target` (same length), rounding to nearest even; a float16 target
/// saturates at ±65504.
pub fn cast(source: Floats<'_>, target: FloatsMut<'_>) -> Result<(), QuantError> {
    check_len("cast target", source.len(), target.len())?;
    in_pool(|| with_floats!(source, source => with_floats!(mut target, target => cast_typed(source, target))));
    Ok(())
}

fn cast_typed<S: Float, D: Float>(source: &[S], target: &mut [D]) {
    source
        .par_chunks(VALUES_PER_TASK)
        .zip(target.par_chunks_mut(VALUES_PER_TASK))
        .for_each_init(Vec::new, |scratch, (source, target)| {
            D::narrow(S::widen(source, scratch), target)
        });
}

/// Marks the types whose every bit pattern is a valid value, so that raw bytes may be viewed as them.
///
/// # Safety
/// Implement only for plain-data types without padding or invalid bit patterns.
unsafe trait PlainBits: Sized {}
unsafe impl PlainBits for f32 {}
unsafe impl PlainBits for f16 {}
unsafe impl PlainBits for bf16 {}

fn view<'a, T: PlainBits>(bytes: &'a [u8], ty: FloatType, buffer: &'static str) -> Result<&'a [T], QuantError> {
    // SAFETY: `T: PlainBits` accepts any bit pattern; align_to only splits off what would be misaligned.
    let (head, values, tail) = unsafe { bytes.align_to::<T>() };
    if !head.is_empty() || !tail.is_empty() {
        return Err(not_floats(bytes.len(), ty, buffer));
    }
    Ok(values)
}

fn view_mut<'a, T: PlainBits>(
    bytes: &'a mut [u8],
    ty: FloatType,
    buffer: &'static str,
) -> Result<&'a mut [T], QuantError> {
    let len = bytes.len();
    // SAFETY: as in `view`; writing any `T` leaves valid bytes behind.
    let (head, values, tail) = unsafe { bytes.align_to_mut::<T>() };
    if !head.is_empty() || !tail.is_empty() {
        return Err(not_floats(len, ty, buffer));
    }
    Ok(values)
}

fn not_floats(len: usize, ty: FloatType, buffer: &'static str) -> QuantError {
    QuantError::NotFloats {
        buffer,
        len,
        dtype: ty.name(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn float16_saturates_and_keeps_nan() {
        let source = [1.0e6f32, -1.0e6, f32::INFINITY, 65504.0, 1.5, f32::NAN];
        let mut target = [f16::ZERO; 6];
        cast(Floats::F32(&source), FloatsMut::F16(&mut target)).unwrap();
        assert_eq!(
            &target[..5],
            &[f16::MAX, f16::MIN, f16::MAX, f16::MAX, f16::from_f32(1.5)]
        );
        assert!(target[5].is_nan());
    }

    #[test]
    fn bfloat16_rounds_to_nearest_even() {
        // 1 + 2^-8 lies halfway between two bfloat16 values; the even one is 1.0
        let source = [1.0f32 + 2f32.powi(-8), 1.0 + 3.0 * 2f32.powi(-8)];
        let mut target = [bf16::ZERO; 2];
        cast(Floats::F32(&source), FloatsMut::Bf16(&mut target)).unwrap();
        assert_eq!(target, [bf16::from_f32(1.0), bf16::from_f32(1.0 + 2.0 * 2f32.powi(-7))]);
    }

    #[test]
    fn views_refuse_partial_or_misaligned_values() {
        let words = [0u32; 4];
        // SAFETY: reading the bytes of a u32 array.
        let bytes: &[u8] = unsafe { std::slice::from_raw_parts(words.as_ptr().cast(), 16) };
        assert_eq!(Floats::from_bytes(bytes, FloatType::F32, "input").unwrap().len(), 4);
        assert_eq!(
            Floats::from_bytes(&bytes[..6], FloatType::F16, "input").unwrap().len(),
            3
        );
        let err = Floats::from_bytes(&bytes[..7], FloatType::F32, "input").unwrap_err();
        assert!(
            matches!(
                err,
                QuantError::NotFloats {
                    len: 7,
                    dtype: "float32",
                    ..
                }
            ),
            "{err}"
        );
        assert!(Floats::from_bytes(&bytes[1..5], FloatType::F32, "input").is_err());
        assert!(cast(Floats::F32(&[1.0]), FloatsMut::F32(&mut [0.0, 0.0])).is_err());
        assert!(FloatType::parse("float64").is_err());
    }
}
