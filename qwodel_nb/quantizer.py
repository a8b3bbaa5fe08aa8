"""The qwodel-compatible facade: ``Quantizer(backend="awq", ...).quantize(format="int4")``.

Same names and behaviour as the original ``qwodel`` AWQ backend, on the qwodel-nb engine:

    from qwodel_nb import Quantizer
    q = Quantizer(backend="awq", model_path="./gemma-2", output_dir="./output",
                  calibration_dataset="wikitext:wikitext-2-raw-v1", token="hf_...")
    out = q.quantize(format="int4")          # returns the output folder
"""

from __future__ import annotations

from typing import Any

from .engine.plan import Plan, make_plan
from .engine.progress import report_retries
from .engine.run import RunResult, execute
from .engine.settings import DEFAULT_CALIBRATION, SUPPORTED_BACKENDS, Settings, make_settings


class Quantizer:
    """Quantize a Hugging Face causal LM to 4-bit AWQ (W4A16, compressed-tensors) for vLLM.

    ``batch_size``, ``seq_length`` and ``num_samples`` left as None are chosen from the GPU's
    memory headroom. Any further engine setting (``group_size``, ``symmetric``, ``ignore``,
    ``trust_remote_code``, ``device``, ``overwrite``, ``seed``, ``text_column``...) can be given
    as a keyword.
    """

    def __init__(
        self,
        backend: str = "awq",
        model_path: str | None = None,
        output_dir: str | None = None,
        calibration_dataset: Any = DEFAULT_CALIBRATION,
        calibration_split: str = "train",
        token: str | None = None,
        batch_size: int | None = None,
        seq_length: int | None = None,
        num_samples: int | None = None,
        **options: Any,
    ):
        self._settings = make_settings(
            backend=backend,
            model=model_path,
            output=output_dir,
            calibration_dataset=calibration_dataset,
            calibration_split=calibration_split,
            token=token,
            batch_size=batch_size,
            seq_len=seq_length,
            num_samples=num_samples,
            **options,
        )
        self.last_result: RunResult | None = None
        self.last_plan: Plan | None = None

    @property
    def settings(self) -> Settings:
        return self._settings

    @property
    def backend(self) -> str:
        return self._settings.backend

    @property
    def model_path(self) -> str:
        return self._settings.model

    @property
    def output_dir(self) -> str | None:
        return self._settings.output

    @staticmethod
    def supported_backends() -> tuple[str, ...]:
        return SUPPORTED_BACKENDS

    def plan(self, **overrides: Any) -> Plan:
        """Resolve every setting (with reasons) without loading weights."""
        return make_plan(self._run_settings(**overrides))

    def quantize(
        self,
        format: str = "int4",
        batch_size: int | None = None,
        seq_len: int | None = None,
        num_samples: int | None = None,
        ignore: list[str] | None = None,
        **overrides: Any,
    ) -> str:
        """Run AWQ and write the compressed model; returns the output folder.

        Arguments given here override the constructor's for this run only.
        """
        settings = self._run_settings(
            format=format, batch_size=batch_size, seq_len=seq_len, num_samples=num_samples, ignore=ignore, **overrides
        )
        plan = make_plan(settings)
        self.last_plan = plan
        self.last_result = execute(plan, [report_retries])
        return self.last_result.output_path

    def _run_settings(self, **overrides: Any) -> Settings:
        changes = {k: v for k, v in overrides.items() if v is not None}
        return self._settings.replace(**changes) if changes else self._settings

    def __repr__(self) -> str:
        s = self._settings
        return (
            f"Quantizer(backend={s.backend!r}, model_path={s.model!r}, output_dir={s.output!r}, "
            f"calibration_dataset={s.public_dict()['calibration_dataset']!r}, "
            f"token={'***' if s.token else None})"
        )
