// dsv3/quant.hpp — moved to formats/quant.hpp (the file formats live in formats/); kept so that existing #includes compile.
#pragma once

#include "formats/quant.hpp"
