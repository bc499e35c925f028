"""Segment Anything model modules (PyTorch), laid out as Meta's state_dict."""
