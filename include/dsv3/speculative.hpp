// dsv3/speculative.hpp — moved to tools/speculative.hpp (the tools live in tools/); kept so that existing #includes compile.
#pragma once

#include "tools/speculative.hpp"
