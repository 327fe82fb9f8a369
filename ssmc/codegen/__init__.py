"""Code generators: one backend per subpackage (triton, tvm)."""
