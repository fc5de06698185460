// dsv3/safetensors.hpp — moved to formats/safetensors.hpp (the file formats live in formats/); kept so that existing #includes compile.
#pragma once

#include "formats/safetensors.hpp"
