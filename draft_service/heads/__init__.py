"""Trained draft heads (EAGLE, Medusa): small networks that draft from the target's own final hidden states."""
