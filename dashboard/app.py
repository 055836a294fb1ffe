"""stability dashboard: ``streamlit run dashboard/app.py [-- --results PATH]``.

Pages: Overview, EDF, LR x WD, Optimizer & length, Spikes, Runs. Everything is read from a
results root (stability's parquet layout) through ``stability.store`` and ``stability.analysis``.
"""

import sys
from pathlib import Path

import streamlit as st

sys.path.insert(0, str(Path(__file__).parent))  # views import common

st.set_page_config(page_title="stability", page_icon=":material/show_chart:", layout="wide")

VIEWS = Path(__file__).parent / "views"
pages = [
    st.Page(VIEWS / "overview.py", title="Overview", icon=":material/home:", default=True),
    st.Page(VIEWS / "edf.py", title="EDF", icon=":material/show_chart:"),
    st.Page(VIEWS / "lr_wd.py", title="LR × WD", icon=":material/scatter_plot:"),
    st.Page(VIEWS / "optimizer.py", title="Optimizer & length", icon=":material/balance:"),
    st.Page(VIEWS / "spikes.py", title="Spikes", icon=":material/bolt:"),
    st.Page(VIEWS / "runs.py", title="Runs", icon=":material/table_rows:"),
]
st.navigation(pages).run()
