//! The quantization kernels of `sfm_core::quant` for Python. Arrays cross as raw bytes (a `uint8` view of a
//! contiguous numpy array or CPU tensor) with their float type named; outputs are buffers the caller allocated,
//! filled with the GIL released. Nothing is copied.

use pyo3::buffer::PyBuffer;
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;

use sfm_core::quant::{self, float32s, float32s_mut, FloatType, Floats, FloatsMut, FourBitType, QuantError};

// The signatures below spell the default block sizes as literals, so that Python's signature shows them.
const _: () = assert!(quant::BLOCKSIZE_8BIT == 4096 && quant::BLOCKSIZE_4BIT == 64);

/// Quantizes `data` (`dtype` values) into `codes` (one byte per value) and `absmax` (float32, one per block).
#[pyfunction]
#[pyo3(signature = (data, dtype, codes, absmax, blocksize=4096))]
pub fn quantize_blockwise8(
    py: Python<'_>,
    data: &Bound<'_, PyAny>,
    dtype: &str,
    codes: &Bound<'_, PyAny>,
    absmax: &Bound<'_, PyAny>,
    blocksize: usize,
) -> PyResult<()> {
    let dtype = FloatType::parse(dtype).map_err(value_error)?;
    let data = readable(data, "data")?;
    let (mut codes, mut absmax) = (writable(codes, "codes")?, writable(absmax, "absmax")?);
    check_disjoint(&[&data], &[&codes, &absmax])?;
    let (data, codes, absmax) = (bytes(&data), bytes_mut(&mut codes), bytes_mut(&mut absmax));
    py.detach(|| {
        let data = Floats::from_bytes(data, dtype, "data")?;
        quant::quantize_8bit(data, blocksize, codes, float32s_mut(absmax, "absmax")?)
    })
    .map_err(value_error)
}

/// Writes `code[codes[i]] * absmax[i // blocksize]` into `out`, an array of `dtype`.
#[pyfunction]
#[pyo3(signature = (codes, absmax, code, out, dtype, blocksize=4096))]
pub fn dequantize_blockwise8(
    py: Python<'_>,
    codes: &Bound<'_, PyAny>,
    absmax: &Bound<'_, PyAny>,
    code: &Bound<'_, PyAny>,
    out: &Bound<'_, PyAny>,
    dtype: &str,
    blocksize: usize,
) -> PyResult<()> {
    let dtype = FloatType::parse(dtype).map_err(value_error)?;
    let (codes, absmax, code) = (
        readable(codes, "codes")?,
        readable(absmax, "absmax")?,
        readable(code, "code")?,
    );
    let mut out = writable(out, "out")?;
    check_disjoint(&[&codes, &absmax, &code], &[&out])?;
    let (codes, absmax, code, out) = (bytes(&codes), bytes(&absmax), bytes(&code), bytes_mut(&mut out));
    py.detach(|| {
        let out = FloatsMut::from_bytes(out, dtype, "out")?;
        quant::dequantize_8bit(
            codes,
            float32s(absmax, "absmax")?,
            float32s(code, "code")?,
            blocksize,
            out,
        )
    })
    .map_err(value_error)
}

/// Quantizes `data` to 4-bit `quant_type` codes ("fp4" or "nf4"), two per byte of `packed`, and `absmax`.
#[pyfunction]
#[pyo3(signature = (data, dtype, quant_type, packed, absmax, blocksize=64))]
pub fn quantize_4bit(
    py: Python<'_>,
    data: &Bound<'_, PyAny>,
    dtype: &str,
    quant_type: &str,
    packed: &Bound<'_, PyAny>,
    absmax: &Bound<'_, PyAny>,
    blocksize: usize,
) -> PyResult<()> {
    let dtype = FloatType::parse(dtype).map_err(value_error)?;
    let kind: FourBitType = quant_type.parse().map_err(value_error)?;
    let data = readable(data, "data")?;
    let (mut packed, mut absmax) = (writable(packed, "packed")?, writable(absmax, "absmax")?);
    check_disjoint(&[&data], &[&packed, &absmax])?;
    let (data, packed, absmax) = (bytes(&data), bytes_mut(&mut packed), bytes_mut(&mut absmax));
    py.detach(|| {
        let data = Floats::from_bytes(data, dtype, "data")?;
        quant::quantize_4bit(data, kind, blocksize, packed, float32s_mut(absmax, "absmax")?)
    })
    .map_err(value_error)
}

/// Writes the values of 4-bit `packed` codes times their block's `absmax` into `out`, an array of `dtype` whose
/// length says how many values there are.
#[pyfunction]
#[pyo3(signature = (packed, absmax, quant_type, out, dtype, blocksize=64))]
pub fn dequantize_4bit(
    py: Python<'_>,
    packed: &Bound<'_, PyAny>,
    absmax: &Bound<'_, PyAny>,
    quant_type: &str,
    out: &Bound<'_, PyAny>,
    dtype: &str,
    blocksize: usize,
) -> PyResult<()> {
    let dtype = FloatType::parse(dtype).map_err(value_error)?;
    let kind: FourBitType = quant_type.parse().map_err(value_error)?;
    let (packed, absmax) = (readable(packed, "packed")?, readable(absmax, "absmax")?);
    let mut out = writable(out, "out")?;
    check_disjoint(&[&packed, &absmax], &[&out])?;
    let (packed, absmax, out) = (bytes(&packed), bytes(&absmax), bytes_mut(&mut out));
    py.detach(|| {
        let out = FloatsMut::from_bytes(out, dtype, "out")?;
        quant::dequantize_4bit(packed, float32s(absmax, "absmax")?, kind, blocksize, out)
    })
    .map_err(value_error)
}

/// Converts `source` (`source_dtype` values) into `target` (`target_dtype`, same count), rounding to nearest
/// even; float16 saturates at ±65504.
#[pyfunction]
pub fn cast_floats(
    py: Python<'_>,
    source: &Bound<'_, PyAny>,
    source_dtype: &str,
    target: &Bound<'_, PyAny>,
    target_dtype: &str,
) -> PyResult<()> {
    let source_dtype = FloatType::parse(source_dtype).map_err(value_error)?;
    let target_dtype = FloatType::parse(target_dtype).map_err(value_error)?;
    let source = readable(source, "source")?;
    let mut target = writable(target, "target")?;
    check_disjoint(&[&source], &[&target])?;
    let (source, target) = (bytes(&source), bytes_mut(&mut target));
    py.detach(|| {
        quant::cast(
            Floats::from_bytes(source, source_dtype, "source")?,
            FloatsMut::from_bytes(target, target_dtype, "target")?,
        )
    })
    .map_err(value_error)
}

/// A code table of bitsandbytes as float32 values: "dynamic" (the 8-bit map, 256 values), "fp4" or "nf4" (16).
#[pyfunction]
pub fn code_table(name: &str) -> PyResult<Vec<f32>> {
    match name {
        "dynamic" => Ok(quant::DYNAMIC_MAP.to_vec()),
        other => Ok(other.parse::<FourBitType>().map_err(value_error)?.code().to_vec()),
    }
}

fn value_error(err: QuantError) -> PyErr {
    PyValueError::new_err(err.to_string())
}

fn readable(obj: &Bound<'_, PyAny>, name: &str) -> PyResult<PyBuffer<u8>> {
    let buffer = PyBuffer::<u8>::get(obj).map_err(|_| not_bytes(obj, name))?;
    if !buffer.is_c_contiguous() {
        return Err(not_bytes(obj, name));
    }
    Ok(buffer)
}

fn writable(obj: &Bound<'_, PyAny>, name: &str) -> PyResult<PyBuffer<u8>> {
    let buffer = readable(obj, name)?;
    if buffer.readonly() {
        return Err(PyValueError::new_err(format!(
            "{name} is read-only: pass a writable array to fill"
        )));
    }
    Ok(buffer)
}

fn not_bytes(obj: &Bound<'_, PyAny>, name: &str) -> PyErr {
    let type_name = obj.get_type().name().map(|n| n.to_string()).unwrap_or_default();
    PyTypeError::new_err(format!(
        "{name} must be a C-contiguous uint8 buffer (e.g. array.reshape(-1).view(numpy.uint8)), not {type_name}"
    ))
}

/// Refuses an output that shares memory with another buffer of the call: the kernels read and write in parallel.
fn check_disjoint(inputs: &[&PyBuffer<u8>], outputs: &[&PyBuffer<u8>]) -> PyResult<()> {
    let range = |b: &PyBuffer<u8>| {
        let start = b.buf_ptr() as usize;
        start..start + b.len_bytes()
    };
    for (i, output) in outputs.iter().enumerate() {
        let out = range(output);
        let others = inputs.iter().chain(&outputs[i + 1..]);
        if others
            .map(|b| range(b))
            .any(|other| other.start < out.end && out.start < other.end)
        {
            return Err(PyValueError::new_err(
                "an output buffer overlaps another buffer of the call: give it its own",
            ));
        }
    }
    Ok(())
}

fn bytes(buffer: &PyBuffer<u8>) -> &[u8] {
    if buffer.len_bytes() == 0 {
        return &[];
    }
    // SAFETY: a C-contiguous buffer of `len_bytes` bytes that stays exported while `buffer` is borrowed.
    unsafe { std::slice::from_raw_parts(buffer.buf_ptr() as *const u8, buffer.len_bytes()) }
}

fn bytes_mut(buffer: &mut PyBuffer<u8>) -> &mut [u8] {
    if buffer.len_bytes() == 0 {
        return &mut [];
    }
    // SAFETY: as in `bytes`; the buffer is writable (checked in `writable`) and overlaps no other buffer of the
    // call (`check_disjoint`), so this is the only reference to its memory here.
    unsafe { std::slice::from_raw_parts_mut(buffer.buf_ptr() as *mut u8, buffer.len_bytes()) }
}
