// dsv3/check.hpp — moved to tools/check.hpp (the tools live in tools/); kept so that existing #includes compile.
#pragma once

#include "tools/check.hpp"
