"""atlas.sessions"""
