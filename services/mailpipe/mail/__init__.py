"""The mail layer: template rendering, address validation, message composition and SMTP reply
classification.

Pure functions and values only. The publisher and the consumer call this layer, and it performs no
I/O of its own.
"""
