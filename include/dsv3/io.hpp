// dsv3/io.hpp — moved to formats/io.hpp (the file formats live in formats/); kept so that existing #includes compile.
#pragma once

#include "formats/io.hpp"
