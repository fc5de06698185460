// dsv3/dtype.hpp — moved to formats/dtype.hpp (the file formats live in formats/); kept so that existing #includes compile.
#pragma once

#include "formats/dtype.hpp"
