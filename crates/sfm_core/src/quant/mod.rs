//! Blockwise quantization kernels for model weights on the CPU, compatible with bitsandbytes: its dynamic 8-bit
//! map (blocks of 4096 by default) and its FP4 and NF4 4-bit types (blocks of 64, two codes per byte), with the
//! same code tables and the same choice of code for every value as bitsandbytes' CPU functions, so the output is
//! byte for byte theirs. Inputs and outputs may be float32, float16 or bfloat16; the arithmetic is float32.
//!
//! Pure functions over slices, no IO: the caller owns every buffer (outputs included) and the functions check
//! their sizes. Blocks are processed in parallel on a rayon pool of the process's own.

mod blockwise8;
pub mod codes;
mod float;
mod fourbit;

pub use blockwise8::{dequantize_8bit, quantize_8bit};
pub use codes::{FourBitType, DYNAMIC_MAP, FP4_CODE, NF4_CODE};
pub use float::{cast, float32s, float32s_mut, Float, FloatType, Floats, FloatsMut};
pub use fourbit::{dequantize_4bit, quantize_4bit};

use std::sync::{Arc, Mutex};

use rayon::{ThreadPool, ThreadPoolBuilder};
use thiserror::Error;

/// bitsandbytes' default block size for 8-bit quantization.
pub const BLOCKSIZE_8BIT: usize = 4096;
/// bitsandbytes' default block size for 4-bit quantization.
pub const BLOCKSIZE_4BIT: usize = 64;

/// About this many values make one parallel task: enough work to pay for the hand-off.
const VALUES_PER_TASK: usize = 1 << 16;

#[derive(Debug, Error, PartialEq)]
pub enum QuantError {
    #[error("blocksize {blocksize} cannot be used: {reason}")]
    BlockSize { blocksize: usize, reason: &'static str },
    #[error("{buffer} holds {actual} values where {expected} are expected")]
    Size {
        buffer: &'static str,
        expected: usize,
        actual: usize,
    },
    #[error("{buffer} ({len} bytes) is not a whole, aligned array of {dtype}: pass a contiguous {dtype} array")]
    NotFloats {
        buffer: &'static str,
        len: usize,
        dtype: &'static str,
    },
    #[error("unknown float type {0:?}: use float32, float16 or bfloat16")]
    UnknownFloatType(String),
    #[error("unknown 4-bit type {0:?}: use fp4 or nf4")]
    UnknownFourBitType(String),
}

/// The number of blocks (and absmax values) for `n` values.
pub fn block_count(n: usize, blocksize: usize) -> usize {
    n.div_ceil(blocksize)
}

fn check_blocksize(blocksize: usize, packs_pairs: bool) -> Result<(), QuantError> {
    if blocksize == 0 {
        return Err(QuantError::BlockSize {
            blocksize,
            reason: "it must be positive",
        });
    }
    if packs_pairs && !blocksize.is_multiple_of(2) {
        return Err(QuantError::BlockSize {
            blocksize,
            reason: "4-bit blocks must hold an even number of values",
        });
    }
    Ok(())
}

fn check_len(buffer: &'static str, expected: usize, actual: usize) -> Result<(), QuantError> {
    if expected == actual {
        Ok(())
    } else {
        Err(QuantError::Size {
            buffer,
            expected,
            actual,
        })
    }
}

fn blocks_per_task(blocksize: usize) -> usize {
    (VALUES_PER_TASK / blocksize).max(1)
}

/// Runs `work` on the kernels' pool. rayon's global pool cannot run anything in a process forked from one that used
/// it (its threads stay with the parent, and a job waits for them forever), so each process builds a pool of its
/// own the first time it quantizes, and a forked child builds another.
fn in_pool<R: Send>(work: impl FnOnce() -> R + Send) -> R {
    static POOL: Mutex<Option<(u32, Arc<ThreadPool>)>> = Mutex::new(None);
    let pool = {
        let mut slot = POOL.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        match &*slot {
            Some((pid, pool)) if *pid == std::process::id() => Arc::clone(pool),
            inherited => {
                let pool = Arc::new(
                    ThreadPoolBuilder::new()
                        .thread_name(|i| format!("flare-quant-{i}"))
                        .build()
                        .expect("start the quantization threads"),
                );
                // a pool inherited through fork has no threads here: dropping it would signal threads that do
                // not exist, so it is left alone
                if let Some((_, inherited)) = inherited {
                    std::mem::forget(Arc::clone(inherited));
                }
                *slot = Some((std::process::id(), Arc::clone(&pool)));
                pool
            }
        }
    };
    pool.install(work)
}
