// dsv3/sampler.hpp — moved to tools/sampler.hpp (the tools live in tools/); kept so that existing #includes compile.
#pragma once

#include "tools/sampler.hpp"
