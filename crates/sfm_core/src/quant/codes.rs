//! bitsandbytes' code tables: the signed dynamic 8-bit map and the FP4 and NF4 4-bit tables, value for value as
//! bitsandbytes computes them in float32 (its tests compare them with `bitsandbytes.functional` when installed).

use std::str::FromStr;

use super::QuantError;

/// The positive half of `bitsandbytes.functional.create_dynamic_map()` (signed, 7 exponent bits, 8 bits) in
/// ascending order. torch's float32 `linspace` decides the last bits of these values, so they are written out
/// rather than recomputed.
#[rustfmt::skip]
const DYNAMIC_POSITIVE: [f32; 127] = [
    0.00000055000004, 0.0000032500002, 0.00000775, 0.000021249998, 0.00004375, 0.00006625, 0.00008875, 0.00015625001,
    0.00026875004, 0.00038125002, 0.00049375003, 0.0006062501, 0.00071875006, 0.00083125, 0.0009437501, 0.0012812499,
    0.00184375, 0.00240625, 0.00296875, 0.0035312497, 0.00409375, 0.0046562497, 0.0052187503, 0.00578125, 0.00634375,
    0.00690625, 0.00746875, 0.00803125, 0.00859375, 0.009156249, 0.00971875, 0.01140625, 0.01421875, 0.01703125,
    0.019843752, 0.02265625, 0.02546875, 0.028281251, 0.03109375, 0.03390625, 0.036718752, 0.03953125, 0.042343747,
    0.04515625, 0.04796875, 0.05078125, 0.05359375, 0.05640625, 0.059218753, 0.06203125, 0.06484375, 0.067656256,
    0.070468746, 0.07328125, 0.07609375, 0.07890625, 0.08171876, 0.08453125, 0.08734375, 0.09015625, 0.092968754,
    0.09578126, 0.09859375, 0.107031256, 0.12109375, 0.13515624, 0.14921875, 0.16328125, 0.17734376, 0.19140625,
    0.20546874, 0.21953125, 0.23359375, 0.24765624, 0.26171875, 0.27578127, 0.28984374, 0.30390626, 0.31796873,
    0.33203125, 0.34609374, 0.36015624, 0.37421876, 0.38828123, 0.40234375, 0.41640624, 0.43046874, 0.44453126,
    0.45859373, 0.47265625, 0.4867187, 0.50078124, 0.5148437, 0.5289062, 0.54296875, 0.5570313, 0.5710938, 0.58515626,
    0.5992187, 0.61328125, 0.6273438, 0.6414063, 0.65546876, 0.6695312, 0.68359375, 0.6976563, 0.7117188, 0.72578126,
    0.7398437, 0.75390625, 0.7679688, 0.78203124, 0.79609376, 0.8101562, 0.82421875, 0.8382813, 0.85234374, 0.86640626,
    0.8804687, 0.89453125, 0.9085938, 0.92265624, 0.93671876, 0.9507812, 0.96484375, 0.9789063, 0.99296874,
];

/// The 256 sorted values of bitsandbytes' signed dynamic 8-bit map: the positive half mirrored, zero, the positive
/// half, and 1.0 (so its range is [-0.99296874, 1.0]).
pub const DYNAMIC_MAP: [f32; 256] = dynamic_map();

const fn dynamic_map() -> [f32; 256] {
    let mut map = [0.0f32; 256];
    let mut k = 0;
    while k < DYNAMIC_POSITIVE.len() {
        map[128 + k] = DYNAMIC_POSITIVE[k];
        map[126 - k] = -DYNAMIC_POSITIVE[k];
        k += 1;
    }
    map[255] = 1.0;
    map
}

/// `get_4bit_type("fp4")`: a sign bit, 2 exponent bits and 1 mantissa bit, in bit-pattern order, scaled by the
/// largest magnitude (12). Code 8, "-0", is +0.0 there, as it is here.
pub const FP4_CODE: [f32; 16] = divided(
    [
        0.0, 0.0625, 8.0, 12.0, 4.0, 6.0, 2.0, 3.0, 0.0, -0.0625, -8.0, -12.0, -4.0, -6.0, -2.0, -3.0,
    ],
    12.0,
);

const fn divided(mut values: [f32; 16], divisor: f32) -> [f32; 16] {
    let mut i = 0;
    while i < values.len() {
        values[i] /= divisor;
        i += 1;
    }
    values
}

/// `get_4bit_type("nf4")`: quantiles of the standard normal distribution scaled to [-1, 1], ascending.
pub const NF4_CODE: [f32; 16] = [
    -1.0,
    -0.6961928,
    -0.52507305,
    -0.3949175,
    -0.28444138,
    -0.18477343,
    -0.091050036,
    0.0,
    0.0795803,
    0.1609302,
    0.2461123,
    0.33791524,
    0.44070983,
    0.562617,
    0.72295684,
    1.0,
];

/// The FP4 codes in ascending order of their values (a stable sort: of the two zeros, code 0 comes first).
const FP4_ASCENDING: [u8; 16] = [11, 10, 13, 12, 15, 14, 9, 0, 8, 1, 6, 7, 4, 5, 2, 3];
const NF4_ASCENDING: [u8; 16] = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15];

/// The two 4-bit data types of bitsandbytes (`quant_type` "fp4" and "nf4").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FourBitType {
    Fp4,
    Nf4,
}

impl FourBitType {
    pub fn name(self) -> &'static str {
        match self {
            FourBitType::Fp4 => "fp4",
            FourBitType::Nf4 => "nf4",
        }
    }

    /// The value of each code, the table a dequantizer multiplies by the block's absmax.
    pub fn code(self) -> &'static [f32; 16] {
        match self {
            FourBitType::Fp4 => &FP4_CODE,
            FourBitType::Nf4 => &NF4_CODE,
        }
    }

    /// The codes sorted by value and the 15 midpoints between neighbours: bitsandbytes' CPU quantizer
    /// (`torch.bucketize` over the midpoints) picks the code whose interval holds the value, a value on a midpoint
    /// going to the lower code.
    pub(crate) fn buckets(self) -> &'static Buckets {
        match self {
            FourBitType::Fp4 => &FP4_BUCKETS,
            FourBitType::Nf4 => &NF4_BUCKETS,
        }
    }
}

impl FromStr for FourBitType {
    type Err = QuantError;

    fn from_str(name: &str) -> Result<Self, QuantError> {
        match name {
            "fp4" => Ok(FourBitType::Fp4),
            "nf4" => Ok(FourBitType::Nf4),
            other => Err(QuantError::UnknownFourBitType(other.to_string())),
        }
    }
}

pub(crate) struct Buckets {
    pub ascending: [u8; 16],
    pub midpoints: [f32; 15],
}

static FP4_BUCKETS: Buckets = buckets(&FP4_CODE, FP4_ASCENDING);
static NF4_BUCKETS: Buckets = buckets(&NF4_CODE, NF4_ASCENDING);

const fn buckets(code: &[f32; 16], ascending: [u8; 16]) -> Buckets {
    let mut midpoints = [0.0f32; 15];
    let mut i = 0;
    while i < 15 {
        midpoints[i] = (code[ascending[i] as usize] + code[ascending[i + 1] as usize]) / 2.0;
        i += 1;
    }
    Buckets { ascending, midpoints }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dynamic_map_is_sorted_symmetric_and_spans_minus_one_to_one() {
        assert!(DYNAMIC_MAP.windows(2).all(|pair| pair[0] < pair[1]));
        assert_eq!(DYNAMIC_MAP[127], 0.0);
        assert_eq!(DYNAMIC_MAP[255], 1.0);
        assert_eq!(DYNAMIC_MAP[0], -0.99296874);
        for k in 1..128 {
            assert_eq!(DYNAMIC_MAP[127 + k], -DYNAMIC_MAP[127 - k], "entry {k} from the middle");
        }
    }

    #[test]
    fn ascending_orders_are_stable_sorts_of_the_codes() {
        for kind in [FourBitType::Fp4, FourBitType::Nf4] {
            let mut order: Vec<u8> = (0..16).collect();
            order.sort_by(|&a, &b| {
                kind.code()[a as usize]
                    .total_cmp(&kind.code()[b as usize])
                    .then(a.cmp(&b))
            });
            // total_cmp orders -0.0 before +0.0; both zeros of FP4 are +0.0, so this is the plain stable order
            assert_eq!(order, kind.buckets().ascending, "{}", kind.name());
            assert!(kind.buckets().midpoints.windows(2).all(|pair| pair[0] <= pair[1]));
        }
    }

    #[test]
    fn four_bit_tables_span_minus_one_to_one() {
        for kind in [FourBitType::Fp4, FourBitType::Nf4] {
            let code = kind.code();
            assert_eq!(code.iter().cloned().fold(f32::MIN, f32::max), 1.0);
            assert_eq!(code.iter().cloned().fold(f32::MAX, f32::min), -1.0);
        }
        assert_eq!(FP4_CODE[8].to_bits(), 0, "FP4's code 8 is +0.0, as in bitsandbytes");
        assert_eq!("nf4".parse::<FourBitType>(), Ok(FourBitType::Nf4));
        assert!("int4".parse::<FourBitType>().is_err());
    }
}
