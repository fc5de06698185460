// dsv3/make_model.hpp — moved to tools/make_model.hpp (the tools live in tools/); kept so that existing #includes compile.
#pragma once

#include "tools/make_model.hpp"
