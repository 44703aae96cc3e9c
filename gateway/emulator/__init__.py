"""Emulated BLE health devices (bumble GATT servers) built from firmware profiles."""

from gateway.emulator.radio import VirtualRadio
from gateway.emulator.scale import EmulatedScale, encode_reading

__all__ = ["EmulatedScale", "VirtualRadio", "encode_reading"]
