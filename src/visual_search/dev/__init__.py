"""Development-only code: the `visual-search` command and what only it, the local stack and the
tests use (bench, eval, audit, folder catalogues, in-process functions, upload, training and
quantisation). The Lambda code layer leaves this folder out (tools/app_layer.py), and no
function imports from it.
"""
