"""The model-file contract: what every model file says about itself, read by one function.

A model file's *card* is the set of facts every stage needs and no stage may re-derive: the
classes, palette and ignore index, the preprocessing, the PSPNet configuration, the output kind
(logits or labels), the precision, the IO tensors and batch range, and the provenance (hashes of
the files it came from, versions). It lives in three formats, each with one reader and one writer:

- a checkpoint (``.pt``): the JSON ``meta`` string of the payload (:mod:`.checkpoint`;
  :func:`dump_checkpoint_meta`, written by :func:`pspnet_deploy.checkpoint.save_checkpoint`);
- an ONNX (``.onnx``): ``pspnet.<key>`` metadata_props with JSON values (:mod:`.onnx_format`;
  :func:`write_onnx_metadata`, written by export, FP16 conversion and calibration);
- a compiled model (``.engine``/``.plan``/``.trt``, or an OpenVINO IR ``.xml``): the JSON sidecar
  ``<file>.json`` (:mod:`.sidecar` reads it; :mod:`pspnet_deploy.engine.sidecar` writes it).
The calibration table beside a Q/DQ ONNX is read here too (:mod:`.table`).

:func:`read_card` (:mod:`.read`) reads any of them, cheaply (a checkpoint's tensors are
memory-mapped, never read; an ONNX is parsed without its external data and without an ONNX
Runtime session; an engine is not opened, only its sidecar), :func:`validate_card`
(:mod:`.schema`) refuses malformed facts and :func:`crosscheck_card` (:mod:`.crosscheck`) refuses
facts that contradict each other (graph vs metadata vs sidecar vs weights), each with one line.
No other module parses model-file metadata (tests/test_layering.py enforces it).

The package, by concern: :mod:`.names` (the suffix table and every artefact name),
:mod:`.schema` (the :class:`ModelCard` and its validation), :mod:`.checkpoint`,
:mod:`.onnx_format`, :mod:`.sidecar`, :mod:`.table` (one module per format), :mod:`.foreign`
(mmseg / semseg checkpoints: the pointer to pspnet-convert), :mod:`.crosscheck`, :mod:`.bounds`
(size bounds) and :mod:`.read` (the readers' table).

**Adding a backend** touches four places: its suffixes in :data:`SUFFIX_KINDS` (and its kind in
``SIDECAR_KINDS`` when it writes the sidecar contract, whose reader it then shares in
:data:`READERS`; otherwise one reader there), one runner file (``pspnet_deploy/runners/``), one
build file (``pspnet_deploy/engine/``), and a tier for those files in tests/test_layering.py.
"""
from __future__ import annotations

from .bounds import check_bounds, check_size, model_min_side
from .checkpoint import (check_finite_weights, dump_checkpoint_meta, read_checkpoint_payload,
                         safe_torch_load)
from .crosscheck import (check_engine_source, crosscheck_card, crosscheck_runtime_io,
                         engine_source_mismatch, rebuild_note)
from .foreign import convert_hint, foreign_layout, foreign_layout_of_file, is_mmseg_state, is_semseg_state
from .names import (PRECISIONS, SIDECAR_KINDS, SUFFIX_KINDS, default_engine_path, failed_report_path,
                    ir_weights_path, model_files, model_kind, parity_report_path, qat_state_path,
                    sensitivity_report_paths, sidecar_path, strip_model_suffix, strip_precision,
                    table_path_for, variant_path)
from .onnx_format import (card_from_onnx_proto, check_finite_initializers, load_onnx_proto,
                          onnx_graph_precision, onnx_meta_from_proto, write_onnx_metadata)
from .read import READERS, read_card
from .schema import (CHANNEL_ORDERS, CHECKPOINT_FORMAT, CHECKPOINT_VERSION, INPUT_KINDS, MODEL_KEYS,
                     ONNX_DTYPES, ONNX_PREFIX, OUTPUT_KINDS, SIDECAR_FORMAT, SIDECAR_SECTIONS,
                     SIDECAR_VERSION, ModelCard, card_from_meta, fix_hint, validate_card)
from .sidecar import read_sidecar_json
from .table import TABLE_FORMAT, TABLE_VERSION, read_calibration_cache_record, read_calibration_table

__all__ = ["CHANNEL_ORDERS", "CHECKPOINT_FORMAT", "CHECKPOINT_VERSION", "INPUT_KINDS", "MODEL_KEYS", "ONNX_DTYPES",
           "ONNX_PREFIX", "OUTPUT_KINDS", "PRECISIONS", "READERS", "SIDECAR_FORMAT", "SIDECAR_KINDS",
           "SIDECAR_SECTIONS", "SIDECAR_VERSION", "SUFFIX_KINDS", "TABLE_FORMAT", "TABLE_VERSION", "ModelCard",
           "card_from_meta", "card_from_onnx_proto", "check_bounds", "check_engine_source", "check_finite_initializers",
           "check_finite_weights", "check_size", "convert_hint", "crosscheck_card", "crosscheck_runtime_io",
           "default_engine_path", "dump_checkpoint_meta", "engine_source_mismatch", "failed_report_path", "rebuild_note",
           "fix_hint", "foreign_layout", "foreign_layout_of_file", "ir_weights_path", "is_mmseg_state",
           "is_semseg_state", "load_onnx_proto", "model_files", "model_kind", "model_min_side", "onnx_graph_precision",
           "onnx_meta_from_proto", "parity_report_path", "qat_state_path", "read_calibration_cache_record",
           "read_calibration_table", "read_card", "read_checkpoint_payload", "read_sidecar_json", "safe_torch_load",
           "sensitivity_report_paths", "sidecar_path", "strip_model_suffix", "strip_precision", "table_path_for",
           "validate_card", "variant_path", "write_onnx_metadata"]
