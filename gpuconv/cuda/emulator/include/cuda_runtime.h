// gpuconv emulator: the built-ins come from the emulator's prelude (gpuconv_emu.h), included first.
#pragma once
