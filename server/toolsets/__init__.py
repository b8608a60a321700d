"""toolsets"""
