"""Thin typed wrappers over syscalls and kernel files: the only ctypes code in stockade.

One module per concern; each call raises OSError carrying errno and the object involved.
"""
