"""``titan-rope`` tools on torchtitan 0.3 jobs (the table and plot are shared with 0.2's ``titan_rope_ext.tools``)."""
