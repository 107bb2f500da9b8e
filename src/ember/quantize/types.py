"""The GGUF types ember can make with llama.cpp's quantizer, named as llama.cpp and Ollama name them (any case)."""

from dataclasses import dataclass

from ember.core.errors import BadRequest


@dataclass(frozen=True)
class QuantType:
    name: str  # llama.cpp's spelling: Q4_K_M, IQ4_XS, F16
    ftype: int  # llama_ftype
    bits: float  # bits per weight of the main tensors, as llama-quantize lists them (a guide, not exact)
    needs_imatrix: bool = False  # llama.cpp refuses these without an importance matrix (too few bits to guess)

    @property
    def is_float(self) -> bool:
        return self.name in FLOAT_TYPES


FLOAT_TYPES = ("F32", "F16", "BF16")

# llama_ftype values (llama.h); IQ2/IQ1 and Q2_K_S spend so few bits that llama.cpp only makes them with an
# importance matrix. TQ1_0/TQ2_0 (ternary) are left out: they suit only models trained for them.
TYPES: dict[str, QuantType] = {t.name: t for t in (
    QuantType("F32", 0, 32), QuantType("F16", 1, 16), QuantType("BF16", 32, 16),
    QuantType("Q8_0", 7, 8.5),
    QuantType("Q6_K", 18, 6.56),
    QuantType("Q5_K_M", 17, 5.69), QuantType("Q5_K_S", 16, 5.54), QuantType("Q5_1", 9, 6.0),
    QuantType("Q5_0", 8, 5.5),
    QuantType("Q4_K_M", 15, 4.89), QuantType("Q4_K_S", 14, 4.58), QuantType("Q4_1", 3, 5.0),
    QuantType("Q4_0", 2, 4.5), QuantType("IQ4_NL", 25, 4.5), QuantType("IQ4_XS", 30, 4.25),
    QuantType("Q3_K_L", 13, 4.27), QuantType("Q3_K_M", 12, 3.91), QuantType("Q3_K_S", 11, 3.5),
    QuantType("IQ3_M", 27, 3.66), QuantType("IQ3_S", 26, 3.44), QuantType("IQ3_XS", 22, 3.3),
    QuantType("IQ3_XXS", 23, 3.06),
    QuantType("Q2_K", 10, 2.96), QuantType("Q2_K_S", 21, 2.96, needs_imatrix=True),
    QuantType("IQ2_M", 29, 2.7, needs_imatrix=True), QuantType("IQ2_S", 28, 2.5, needs_imatrix=True),
    QuantType("IQ2_XS", 20, 2.31, needs_imatrix=True), QuantType("IQ2_XXS", 19, 2.06, needs_imatrix=True),
    QuantType("IQ1_M", 31, 1.75, needs_imatrix=True), QuantType("IQ1_S", 24, 1.56, needs_imatrix=True),
)}


def known_types() -> str:
    return ", ".join(TYPES)


def parse_type(raw: str, field: str = "type") -> QuantType:
    """`q4_k_m`, `Q4_K_M`, `q4_K_M` (Ollama's spelling) all name Q4_K_M."""
    key = (raw or "").strip().upper().replace("-", "_")
    if key not in TYPES:
        raise BadRequest(f"{field} {raw!r} is not a quantization ember can make; known (any case): {known_types()}")
    return TYPES[key]
