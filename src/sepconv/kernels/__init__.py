"""Fast CPU kernels for depthwise and separable convolution (see docs/performance.md).

``SEPCONV_KERNELS=auto|on|off`` chooses: ``off`` always runs the PyTorch path.
"""
