"""stability dashboard: ``stability dashboard --results PATH`` (or ``streamlit run dashboard/app.py
-- --results PATH [--allow-browse]``).

Pages: Overview, EDF, LR x WD, Optimizer & length, Spikes, Runs, Hyperparameters, LR sensitivity, Pruning. The results
root and the filters live in this entry script's sidebar (``common.sidebar``), so they are the
same on every page and in the URL; pages read them through ``common``.
"""

from pathlib import Path

import streamlit as st

from stability.dashboard.common import keep_page_state, sidebar, sync_url

st.set_page_config(page_title="stability", layout="wide")  # no page_icon: a material icon is fetched from the web

VIEWS = Path(__file__).parent / "views"
# No page icons: Streamlit fetches material icons from fonts.gstatic.com for them (offline here).
pages = [
    st.Page(VIEWS / "overview.py", title="Overview", default=True),
    st.Page(VIEWS / "edf.py", title="EDF"),
    st.Page(VIEWS / "lr_wd.py", title="LR × WD"),
    st.Page(VIEWS / "optimizer.py", title="Optimizer & length"),
    st.Page(VIEWS / "spikes.py", title="Spikes"),
    st.Page(VIEWS / "runs.py", title="Runs"),
    st.Page(VIEWS / "hparams.py", title="Hyperparameters"),
    st.Page(VIEWS / "sensitivity.py", title="LR sensitivity"),
    st.Page(VIEWS / "pruning.py", title="Pruning"),
]
page = st.navigation(pages)
st.session_state["_page_path"] = page.url_path
keep_page_state()
sidebar()
page.run()
sync_url()
