"""In-process measurements of the engine (no HTTP): they import the engine
directly, so they live here and not in bench/, which measures over HTTP."""
