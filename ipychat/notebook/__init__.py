"""The IPython and ipywidgets front ends: magics, progress, display, the panel."""
