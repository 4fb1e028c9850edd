"""The names and numbers of the quantization filters: NVFlare's (``nvflare.app_opt.pt.quantization.constant``)
plus ``bfloat16``, which is ours."""

from __future__ import annotations

from flare.apis.fl_constant import FLMetaKey

# source types that are quantized (upper case, as NVFlare lists them)
DATA_TYPE = ["FLOAT32", "FLOAT16", "BFLOAT16"]
QUANTIZATION_TYPE = ["FLOAT16", "BLOCKWISE8", "FLOAT4", "NORMFLOAT4", "ADAQUANT", "BFLOAT16"]

# short names accepted for convenience; the message always carries the full name
ALIASES = {"fp16": "float16", "bf16": "bfloat16", "fp4": "float4", "nf4": "normfloat4"}

# keys of FLModel.meta on a quantized model
PROCESSED_ALGORITHM = FLMetaKey.PROCESSED_ALGORITHM
QUANT_STATE = "quant_state"
SOURCE_DATATYPE = "source_datatype"
QUANTIZED_FLAG = "quantized_flag"
META_KEYS = (PROCESSED_ALGORITHM, QUANT_STATE, SOURCE_DATATYPE, QUANTIZED_FLAG)

# bits per value of each source type and of each type that stores fewer bits (adaquant chooses per param)
SOURCE_BITS = {"float32": 32, "float16": 16, "bfloat16": 16}
QUANTIZED_BITS = {"float16": 16, "bfloat16": 16, "blockwise8": 8, "float4": 4, "normfloat4": 4}

# bitsandbytes' quant_type of the 4-bit types, and its default block sizes
FOUR_BIT_TYPES = {"float4": "fp4", "normfloat4": "nf4"}
BLOCKSIZE_8BIT = 4096
BLOCKSIZE_4BIT = 64
