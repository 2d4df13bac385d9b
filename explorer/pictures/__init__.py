"""Pure pictures (numpy/PIL) and plotly figures of a reduction: no model, no gradio."""
