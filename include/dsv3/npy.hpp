// dsv3/npy.hpp — moved to formats/npy.hpp (the file formats live in formats/); kept so that existing #includes compile.
#pragma once

#include "formats/npy.hpp"
