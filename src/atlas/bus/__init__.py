"""atlas.bus"""
