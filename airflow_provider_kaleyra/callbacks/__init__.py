"""SOIP callbacks: receiver, store, payload reading. Import-light: sensor and trigger import .store only."""
