"""A stored model (or a GGUF file) quantized into a new model in the store, with a report of what it cost.

One function serves `ember quantize`, `ember create --quantize` and /api/create's `quantize`. Every refusal comes
before the first progress report, so that the API can still answer it with a 4xx; the quantized file lives under a
locked temp name until the store has imported it, so a failure, a cancel or Ctrl-C leaves nothing behind.

The report is kept as JSON under EMBER_HOME/quantize/, named by the digest of the new model's weights: it describes
those bytes, so it stays true through `ember cp` and is never shown for other weights that later take the same name,
and the store's manifests keep the layout Ollama reads.
"""

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ember.core.errors import BadRequest
from ember.core.options import PRESETS, parse_options
from ember.core.templates import compile_template
from ember.quantize.quality import Quality, compare, sample_texts
from ember.quantize.quantizer import check, quantized
from ember.quantize.types import QuantType, parse_type
from ember.store.blobs import normalize_digest
from ember.store.gguf_info import GGUFInfo, read_gguf_info
from ember.store.modelfile import CreateSpec
from ember.store.names import parse_name
from ember.store.store import Model, ModelStore, Report, silent

IMATRIX_CTX = 512  # llama-imatrix's default chunk
MIN_IMATRIX_CTX = 64


@dataclass
class QuantizeJob:
    name: str  # the new model
    spec: CreateSpec  # spec.from_ is the source: a stored model, an absolute GGUF path or a blob digest
    type: str
    allow_requantize: bool = False
    imatrix_text: str | None = None  # text to collect an importance matrix on; None: none
    report: bool = True
    report_texts: dict[str, str] | None = None  # None: the bundled English and Russian samples
    ctx: int = 256  # tokens per chunk of the quality report
    report_chunks: int | None = 2  # chunks of each text the report reads (None: all); both models read each
    threads: int | None = None
    announce: bool = True  # put the report's summary into the progress stream (the API); the CLI prints a table
    reports_dir: Path | None = None  # where the report's JSON goes; None: not kept


@dataclass
class Prepared:
    job: QuantizeJob
    target: QuantType
    source: Path
    source_type: str
    parent: Model | None
    info: GGUFInfo
    report_texts: dict[str, str]
    report_ctx: int
    imatrix_ctx: int
    no_report: str = ""  # why no report is made, when the job asked for one


def _source(store: ModelStore, raw: str) -> tuple[Path, Model | None]:
    raw = (raw or "").strip()
    if not raw:
        raise BadRequest("say what to quantize: a model name (from), an absolute GGUF path or a blob digest")
    if raw.startswith("sha256"):
        return store.blobs.require(normalize_digest(raw)), None
    if "/" in raw or "\\" in raw or raw.lower().endswith(".gguf"):
        path = Path(raw)
        if not path.is_absolute() or not path.is_file():
            raise BadRequest(f"FROM {raw!r}: give a stored model's name or an existing GGUF file's absolute path")
        return path, None
    parent = store.get(raw)
    if parent.is_speech:
        raise BadRequest(f"{parent.name} is a speech-to-text model (CTranslate2 Whisper); ember quantizes GGUF "
                         "language models. Whisper models come already quantized (int8): pick a smaller one with "
                         "`ember pull whisper:…`")
    return parent.model_path, parent


def _vocab_tokens(path: Path, texts: dict[str, str]) -> dict[str, int]:
    """How many tokens each text is for this model (its vocabulary only is loaded: milliseconds)."""
    import llama_cpp
    from llama_cpp import _internals as internals

    import ember.engines.llamacpp  # noqa: F401  (llama.cpp's chatter into ember's log)

    params = llama_cpp.llama_model_default_params()
    params.vocab_only = True
    model = internals.LlamaModel(path_model=str(path), params=params, verbose=False)
    try:
        return {name: len(model.tokenize(text.encode("utf-8"), add_bos=True, special=False))
                for name, text in texts.items()}
    finally:
        model.close()


def _check_spec(spec: CreateSpec) -> None:
    """What store.create would refuse only after the quantization's minutes of work."""
    params = dict(spec.parameters or {})
    preset = params.pop("preset", None)
    if preset is not None and preset not in PRESETS:
        raise BadRequest(f"unknown preset {preset!r} (known: {', '.join(PRESETS)})")
    parse_options(params, where="parameters")
    if spec.template:
        compile_template(spec.template)


def prepare(store: ModelStore, job: QuantizeJob) -> Prepared:
    """Every check, before any work: the errors a client must see as a 4xx."""
    parse_name(job.name)
    target = parse_type(job.type, "quantize")
    source, parent = _source(store, job.spec.from_)
    _check_spec(job.spec)
    info = read_gguf_info(source)
    what = parent.name if parent else source.name
    have = check(source, target, allow_requantize=job.allow_requantize, imatrix=job.imatrix_text is not None,
                 what=what)
    if job.ctx < 8 or job.ctx % 2:
        raise BadRequest(f"--ctx {job.ctx}: give an even number of tokens, at least 8")
    # A chunk longer than the model was trained for measures its extrapolation, not its quantization.
    trained = info.context_length or job.ctx
    report_ctx = min(job.ctx, trained - trained % 2)
    texts, no_report, imatrix_ctx = {}, "", IMATRIX_CTX
    if job.report and f"{info.architecture}.pooling_type" in info.model_info:
        no_report = (f"no quality report: {what} is an embedding model, and perplexity and KL divergence measure "
                     "next-token prediction")
    elif job.report:
        texts = job.report_texts if job.report_texts is not None else sample_texts()
        counts = _vocab_tokens(source, texts)
        if job.report_texts is not None:
            short = [f"{n} ({counts[n]} tokens)" for n in texts if counts[n] < report_ctx]
            if short:
                raise BadRequest(f"the report text {', '.join(short)} is shorter than one chunk of {report_ctx} "
                                 "tokens: give more text or a smaller --ctx")
        else:
            texts = {n: t for n, t in texts.items() if counts[n] >= report_ctx}
            if not texts:
                no_report = (f"no quality report: the bundled samples are shorter than one chunk of {report_ctx} "
                             f"tokens for {what}; give --report-data FILE or a smaller --ctx")
    if job.imatrix_text is not None:
        n = _vocab_tokens(source, {"imatrix": job.imatrix_text})["imatrix"]
        imatrix_ctx = min(IMATRIX_CTX, trained, n) // 2 * 2
        if imatrix_ctx < MIN_IMATRIX_CTX:
            raise BadRequest(f"the importance-matrix text is {n} tokens; give at least {MIN_IMATRIX_CTX} (a few "
                             "thousand tokens of text like what the model will read is typical)")
    return Prepared(job, target, source, have, parent, info, texts, report_ctx, imatrix_ctx, no_report)


def _merged(job: QuantizeJob, parent: Model | None, weights: Path) -> CreateSpec:
    """The new model's recipe: the quantized weights, and what the source had unless the request says otherwise."""
    spec = job.spec
    if parent is None:
        return replace(spec, from_=str(weights))
    return CreateSpec(
        from_=str(weights), parameters={**parent.params, **(spec.parameters or {})},
        template=spec.template or parent.template,
        system=spec.system if spec.system is not None else parent.system,
        license=spec.license or parent.license,
        adapters=spec.adapters or [str(p) for p in parent.adapter_paths],
        messages=spec.messages or parent.messages,
    )


@dataclass
class Result:
    model: Model
    quality: Quality | None  # None when no report was made
    note: str = ""  # why not, when one was asked for
    report_path: Path | None = None


def run(store: ModelStore, job: QuantizeJob, report: Report = silent) -> Result:
    """Quantize, measure, store."""
    from ember.quantize.imatrix import compute_imatrix

    p = prepare(store, job)
    imatrix = None
    if job.imatrix_text is not None:
        status = "computing importance matrix"
        report(f"{status} with {p.source.name if p.parent is None else p.parent.name}")
        imatrix = compute_imatrix(p.source, job.imatrix_text, ctx=p.imatrix_ctx, threads=job.threads,
                                  progress=lambda i, n: report(status, completed=i, total=n))
    # Ollama's own words for this step.
    report(f"quantizing {p.source_type} model to {p.target.name}")
    with quantized(p.source, store.blobs.root, p.target, imatrix=imatrix, allow_requantize=job.allow_requantize,
                   threads=job.threads) as weights:
        report(f"quantized {_size(p.source)} to {_size(weights)}")
        quality = None
        if p.report_texts:
            status = "measuring what it cost on held-out text"
            report(f"{status} ({', '.join(p.report_texts)})")
            quality = compare(p.source, weights, p.report_texts, ctx=p.report_ctx, threads=job.threads,
                              type_name=p.target.name, reference_name=p.parent.name if p.parent else p.source.name,
                              candidate_name=str(parse_name(job.name)), require_all=job.report_texts is not None,
                              max_chunks=job.report_chunks,
                              progress=lambda i, n: report(status, completed=i, total=n))
        held: list[dict[str, Any]] = []

        def until_success(status: str, **fields: Any) -> None:
            if status == "success":
                held.append(fields)
            else:
                report(status, **fields)

        model = store.create(job.name, _merged(job, p.parent, weights), until_success)
    saved = None
    if quality is not None and job.reports_dir is not None:
        saved = quality.save(saved_report(job.reports_dir, model))
    if job.announce:
        if quality is not None:
            report(quality.summary())
        elif p.no_report:
            report(p.no_report)
    report("success")
    return Result(model, quality, p.no_report, saved)


def _size(path: Path) -> str:
    return f"{path.stat().st_size / 1e6:.1f} MB"


def saved_report(reports_dir: Path, model: Model) -> Path:
    return reports_dir / f"{model.layers[0]['digest'].replace(':', '-')}.json"
