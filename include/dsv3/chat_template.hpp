// dsv3/chat_template.hpp — moved to text/chat_template.hpp (the text stack live in text/); kept so that existing #includes compile.
#pragma once

#include "text/chat_template.hpp"
