// The precompiled LibTorch header for the examples is built with this empty file.
