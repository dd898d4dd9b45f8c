"""CUD Explorer — home page: pick the model and the dataset, see what is loaded and computed.

Run with `make run` (or `streamlit run app.py`). All computation lives in `cud_core`.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import pandas as pd
import streamlit as st

from cud_core.data import BUILTINS, DataError, load_data, load_samples
from cud_core.models import EMBEDDED, ModelLoadError, load_model
from cud_core.store import DEFAULT_WORKSPACE, Workspace

st.set_page_config(page_title="CUD Explorer", layout="wide")


@st.cache_resource(show_spinner=False)
def cached_model(spec: str, dtype: str, device: str):
    return load_model(spec, dtype=dtype, device=device)


@st.cache_data(show_spinner=False)
def cached_dataset(spec: str):
    return load_data(spec)


def load_upload(upload) -> list:
    folder = Path(tempfile.mkdtemp(prefix="cud-upload-"))
    path = folder / Path(upload.name).name
    path.write_bytes(upload.getvalue())
    return load_samples(path)


def model_picker() -> str:
    params = st.query_params
    choices = ["embedded", "local folder", "hub id"]
    current = params.get("model", EMBEDDED)
    kind = st.sidebar.radio("Model", choices, index=0 if current == EMBEDDED else (1 if Path(current).exists() else 2),
                            help="embedded = SmolLM2-135M-Instruct, shipped with the tool, fully offline")
    if kind == "embedded":
        spec = EMBEDDED
    else:
        default = "" if current == EMBEDDED else current
        spec = st.sidebar.text_input("Folder path" if kind == "local folder" else "Hub id (already in the local cache)",
                                     value=default).strip()
    if spec:
        st.query_params["model"] = spec
    return spec


def dataset_picker():
    options = [f"builtin:{name}" for name in BUILTINS] + ["upload a file"]
    current = st.query_params.get("data", options[0])
    choice = st.sidebar.selectbox("Dataset", options, index=options.index(current) if current in options else 0)
    if choice != "upload a file":
        st.query_params["data"] = choice
        return choice, cached_dataset(choice)
    upload = st.sidebar.file_uploader("Question/answer file", type=["json", "jsonl", "csv", "parquet"],
                                      help="Columns `question` and `answer` (TOFU format); optional `id`.")
    if upload is None:
        return None, None
    return upload.name, load_upload(upload)


def main() -> None:
    st.title("CUD Explorer")
    st.caption("Which forget-set samples will be hard to unlearn, and why: circuit-guided unlearning difficulty.")
    spec = model_picker()
    dtype = st.sidebar.selectbox("dtype", ["float32", "bfloat16", "float16"])
    device = st.sidebar.selectbox("Device", ["auto", "cpu", "cuda"])
    workspace = st.sidebar.text_input("Workspace folder", value=st.query_params.get("workspace", DEFAULT_WORKSPACE))

    model_col, data_col = st.columns(2)
    with model_col:
        st.subheader("Model")
        if not spec:
            st.info("Enter a model folder or hub id in the sidebar.")
        else:
            try:
                with st.spinner(f"Loading {spec} (the first embedded load converts it once, about 30 s)..."):
                    lm = cached_model(spec, dtype, device)
                st.success(f"{lm.name} on {lm.device} ({lm.info['dtype']})")
                st.table(pd.DataFrame({"value": {k: str(v) for k, v in lm.info.items()}}))
            except ModelLoadError as exc:
                st.error(f"Cannot load the model: {exc}")
    with data_col:
        st.subheader("Dataset")
        try:
            name, samples = dataset_picker()
            if samples is None:
                st.info("Upload a JSON, JSONL, CSV or Parquet file with `question` and `answer` columns.")
            else:
                st.success(f"{name}: {len(samples)} samples")
                st.dataframe(pd.DataFrame([{"id": s.id, "question": s.question, "answer": s.answer}
                                           for s in samples]), hide_index=True, height=260)
        except DataError as exc:
            st.error(f"The data has {len(exc.problems)} problem(s); nothing was loaded.")
            st.code(exc.report(), language=None)

    st.subheader("Workspace")
    try:
        runs = Workspace(workspace).list_runs()
    except Exception as exc:  # an unusable folder must not break the page
        st.error(f"Cannot open workspace {workspace!r}: {exc}")
        return
    if runs:
        st.dataframe(pd.DataFrame([{k: r[k] for k in ("id", "kind", "model", "dataset", "status", "message")}
                                   for r in runs]), hide_index=True)
    else:
        st.info(f"Nothing computed yet in `{workspace}`. Score samples with "
                "`python -m cud_core score --model embedded --data builtin:world-facts`.")


main()
